# Per-category metrics (image and pixel level) and figures.

rule metrics:
    input:
        scores=exp("scores.csv"),
        maps=exp("maps.h5"),
    output:
        exp("metrics.json"),
    params:
        metrics=lambda wc: P({**dfr_config.metrics_params(config, wc.dataset), "dataset": wc.dataset, "category": wc.category}),
    log:
        f"logs/{E}/metrics/{{dataset}}/{{category}}.log",
    conda:
        ENV
    shell:
        "{DFR} metrics --scores {input.scores} --maps {input.maps} --out {output}"
        " --params {params.metrics:q} > {log} 2>&1"


rule plots:
    input:
        scores=exp("scores.csv"),
        maps=exp("maps.h5"),
        metrics=exp("metrics.json"),
        history=exp("history.csv"),
    output:
        touch(exp("plots/.done")),
    params:
        outdir=exp("plots"),
        plots=P({"n_examples": 3}),
    log:
        f"logs/{E}/plots/{{dataset}}/{{category}}.log",
    conda:
        ENV
    shell:
        "{DFR} plots --scores {input.scores} --maps {input.maps} --metrics {input.metrics}"
        " --history {input.history} --outdir {params.outdir} --params {params.plots:q} > {log} 2>&1"
