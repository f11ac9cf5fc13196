# The synthetic dataset: deterministic MVTec-layout categories with exact masks (demo and tests).

rule synthetic:
    output:
        PATHS["synthetic"],
    params:
        gen=lambda wc: P({**DATASETS[wc.dataset]["synthetic"], "seed": config["seed"]}),
        root=lambda wc: dataset_root(wc.dataset),
    resources:
        mem_mb=mem_mb("synthetic"),
        runtime=runtime("synthetic"),
    benchmark:
        bench("synthetic")
    log:
        LOGS["synthetic"],
    conda:
        ENV
    shell:
        "python -m dfr synthetic --root {params.root} --category {wildcards.category} --params {params.gen:q} > {log} 2>&1"
