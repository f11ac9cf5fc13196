# The synthetic dataset: deterministic MVTec-layout categories with exact masks (demo and tests).

rule synthetic:
    output:
        PATHS["synthetic"],
    params:
        gen=lambda wc: P({**DATASETS[wc.dataset]["synthetic"], "seed": config["seed"]}),
        root=lambda wc: dataset_root(wc.dataset),
    log:
        f"logs/synthetic/{{dataset}}/{{category}}.log",
    conda:
        ENV
    shell:
        "{DFR} synthetic --root {params.root} --category {wildcards.category} --params {params.gen:q} > {log} 2>&1"
