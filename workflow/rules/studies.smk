# A study's comparison: every variant x category side by side, the best variant, and plots of each metric
# against each swept setting. Only with a `study` in the config.


# What the comparison reads of each variant, written to a file: for a study of many variants x categories
# it is longer than one command-line argument may be (128 KiB on Linux). Its params make it, and so the
# comparison, rerun when a variant's settings or keys change.
rule study_manifest:
    output:
        COMPARISON["manifest"],
    log:
        dfr_layout.fill(LOGS["study_manifest"], {"experiment": E}),
    benchmark:
        dfr_layout.benchmark_path(dfr_layout.fill(LOGS["study_manifest"], {"experiment": E}))
    resources:
        mem_mb=mem_mb("study_manifest"),
        runtime=runtime("study_manifest"),
    params:
        manifest=P(PLAN.manifest()) if STUDY else "{}",
    run:
        write_manifest(params.manifest, output[0], log[0])


# The speeds the comparison publishes and chooses on: every variant timed warm, in one process, on the same
# images (dfr.stages.timing); the jobs' wall times stay as cost records.
rule study_timing:
    input:
        unpack(lambda wc: PLAN.timing_inputs() if STUDY else {}),
        manifest=COMPARISON["manifest"],
    output:
        COMPARISON["timing"],
    log:
        dfr_layout.fill(LOGS["study_timing"], {"experiment": E}),
    benchmark:
        dfr_layout.benchmark_path(dfr_layout.fill(LOGS["study_timing"], {"experiment": E}))
    conda:
        ENV
    threads: THREADS
    resources:
        gpu=GPU,
        mem_mb=lambda wc, attempt: attempt * TIMING_ESTIMATE["mem_mb"],
        runtime=lambda wc, attempt: attempt * TIMING_ESTIMATE["runtime"],
    params:
        timing=P(dfr_keys.timing_params()),
    shell:
        "python -m dfr --threads {threads} timing --manifest {input.manifest:q} --out {output}"
        " --params {params.timing:q} > {log} 2>&1"


rule study:
    input:
        unpack(lambda wc: PLAN.comparison_inputs() if STUDY else {}),
        manifest=COMPARISON["manifest"],
        timing=COMPARISON["timing"],
    output:
        csv=report(COMPARISON["csv"], caption=f"{REPORT}/study_table.rst", category="Study", labels={"figure": "table"}),
        md=COMPARISON["md"],
        best=COMPARISON["best"],
        plots=report(
            directory(COMPARISON["plots"]),
            patterns=["{name}.png"],
            caption=f"{REPORT}/study_plots.rst",
            category="Study",
            labels={"figure": "{name}"},
        ),
    log:
        dfr_layout.fill(LOGS["study"], {"experiment": E}),
    benchmark:
        dfr_layout.benchmark_path(dfr_layout.fill(LOGS["study"], {"experiment": E}))
    conda:
        ENV
    resources:
        mem_mb=mem_mb("study"),
        runtime=runtime("study"),
    shell:
        "python -m dfr study --manifest {input.manifest:q} --timing {input.timing} --csv {output.csv} --md {output.md}"
        " --best {output.best} --plots {output.plots} > {log} 2>&1"
