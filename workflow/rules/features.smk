# Feature extraction and fusion f(x), cached to HDF5 per category and split. The cache path is keyed by
# what shapes it (backbone, weights, layers, pooling, image size, normalisation, dtype), so experiments that
# differ only downstream share it.


rule features:
    input:
        PATHS["index"],
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
        features=stage_params(dfr_config.feature_params),
    shell:
        "python -m dfr --threads {threads} features --index {input} --split {wildcards.split} --out {output}"
        " --params {params.features:q} > {log} 2>&1"
