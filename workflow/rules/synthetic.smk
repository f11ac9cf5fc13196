# The synthetic dataset: deterministic MVTec-layout categories with exact masks (demo and tests).


rule synthetic:
    output:
        PATHS["synthetic"],
    log:
        LOGS["synthetic"],
    benchmark:
        bench("synthetic")
    conda:
        ENV
    resources:
        mem_mb=mem_mb("synthetic"),
        runtime=runtime("synthetic"),
    params:
        gen=lambda wc: P(dfr_keys.synthetic_params(config, wc.dataset)),
        root=lambda wc: dataset_root(wc.dataset),
    shell:
        "python -m dfr synthetic --root {params.root} --category {wildcards.category} --params {params.gen:q} > {log} 2>&1"
