# Feature extraction and fusion f(x), cached to HDF5 per category and split. The cache path is keyed by
# what shapes it (backbone, the weights' identity, layers, pooling, grid, padding, image size, normalisation,
# dtype, autocast, the features code version), so experiments that differ only downstream share it.


rule features:
    input:
        index=PATHS["index"],
    output:
        PATHS["features"],
    log:
        LOGS["features"],
    benchmark:
        bench("features")
    conda:
        ENV
    threads: THREADS
    resources:
        gpu=GPU,
        mem_mb=mem_mb("features"),
        runtime=runtime("features"),
    params:
        features=stage_params(dfr_keys.feature_params),
        files=category_files,
    shell:
        "python -m dfr --threads {threads} features --index {input.index} --split {wildcards.split} --out {output}"
        " --params {params.features:q} > {log} 2>&1"
