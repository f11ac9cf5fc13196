# Index and validate a category in MVTec layout; hold out normal training images for validation.


rule index:
    input:
        category_ready,
    output:
        PATHS["index"],
    log:
        LOGS["index"],
    benchmark:
        bench("index")
    conda:
        ENV
    resources:
        mem_mb=mem_mb("index"),
        runtime=runtime("index"),
    params:
        root=lambda wc: dataset_root(wc.dataset),
        files=category_files,
        code=dfr_keys.code_version("index"),
    shell:
        "python -m dfr index --root {params.root} --category {wildcards.category} --out {output} > {log} 2>&1"


rule split:
    input:
        PATHS["index"],
    output:
        PATHS["split"],
    log:
        LOGS["split"],
    benchmark:
        bench("split")
    conda:
        ENV
    resources:
        mem_mb=mem_mb("split"),
        runtime=runtime("split"),
    params:
        split=stage_params(dfr_keys.split_params),
        files=category_files,
    shell:
        "python -m dfr split --index {input} --out {output} --params {params.split:q} > {log} 2>&1"
