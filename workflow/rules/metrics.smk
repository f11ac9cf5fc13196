# Per-category metrics (image and pixel level) and figures.


rule metrics:
    input:
        unpack(inputs("scores", "maps")),
    output:
        PATHS["metrics"],
    log:
        LOGS["metrics"],
    benchmark:
        bench("metrics")
    conda:
        ENV
    resources:
        mem_mb=mem_mb("metrics"),
        runtime=runtime("metrics"),
    params:
        metrics=lambda wc: P(
            {
                **dfr_keys.metrics_params(cfg_of(wc), wc.dataset, dfr_plan.members(cfg_of(wc))),
                "dataset": wc.dataset,
                "category": wc.category,
            }
        ),
    shell:
        "python -m dfr metrics --scores {input.scores} --maps {input.maps} --out {output}"
        " --params {params.metrics:q} > {log} 2>&1"


rule plots:
    input:
        unpack(inputs("scores", "maps", "metrics", "history")),
    output:
        report(
            directory(PATHS["plots"]),
            patterns=["{name}.png"],
            caption=f"{REPORT}/category.rst",
            category="{dataset}/{category}",
            subcategory="{experiment}",
            labels={"experiment": "{experiment}", "figure": "{name}"},
        ),
    log:
        LOGS["plots"],
    benchmark:
        bench("plots")
    conda:
        ENV
    resources:
        mem_mb=mem_mb("plots"),
        runtime=runtime("plots"),
    params:
        plots=stage_params(dfr_keys.plots_params),
    shell:
        "python -m dfr plots --scores {input.scores} --maps {input.maps} --metrics {input.metrics}"
        " --history {input.history} --outdir {output} --params {params.plots:q} > {log} 2>&1"
