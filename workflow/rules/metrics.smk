# Per-category metrics (image and pixel level) and figures.

rule metrics:
    input:
        scores=PATHS["scores"],
        maps=PATHS["maps"],
    output:
        PATHS["metrics"],
    params:
        metrics=lambda wc: P({**dfr_config.metrics_params(config, wc.dataset), "dataset": wc.dataset, "category": wc.category}),
    resources:
        mem_mb=mem_mb("metrics"),
        runtime=runtime("metrics"),
    benchmark:
        bench("metrics")
    log:
        LOGS["metrics"],
    conda:
        ENV
    shell:
        "python -m dfr metrics --scores {input.scores} --maps {input.maps} --out {output}"
        " --params {params.metrics:q} > {log} 2>&1"


rule plots:
    input:
        scores=PATHS["scores"],
        maps=PATHS["maps"],
        metrics=PATHS["metrics"],
        history=PATHS["history"],
    output:
        touch(PATHS["plots_done"]),
    params:
        outdir=PATHS["plots"],
        plots=P({"n_examples": 3}),
    resources:
        mem_mb=mem_mb("plots"),
        runtime=runtime("plots"),
    benchmark:
        bench("plots")
    log:
        LOGS["plots"],
    conda:
        ENV
    shell:
        "python -m dfr plots --scores {input.scores} --maps {input.maps} --metrics {input.metrics}"
        " --history {input.history} --outdir {params.outdir} --params {params.plots:q} > {log} 2>&1"
