# A study's comparison: every variant x category side by side, the best variant, and plots of each metric
# against each swept setting. Only with a `study` in the config.


rule study:
    input:
        unpack(lambda wc: PLAN.comparison_inputs() if STUDY else {}),
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
        f"logs/{E}/study.log",
    benchmark:
        dfr_layout.benchmark_path(f"logs/{E}/study.log")
    conda:
        ENV
    resources:
        mem_mb=mem_mb("study"),
        runtime=runtime("study"),
    params:
        manifest=P(PLAN.manifest()) if STUDY else "{}",
    shell:
        "python -m dfr study --manifest {params.manifest:q} --csv {output.csv} --md {output.md} --best {output.best}"
        " --plots {output.plots} > {log} 2>&1"
