# The 1x1 convolutional autoencoder, trained on cached normal features only (never runs the backbone).


rule train:
    input:
        unpack(cae_inputs),
    output:
        model=PATHS["model"],
        history=PATHS["history"],
        info=PATHS["model_info"],
    log:
        LOGS["train"],
    benchmark:
        bench("train")
    conda:
        ENV
    threads: THREADS
    resources:
        gpu=GPU,
        mem_mb=mem_mb("train"),
        runtime=runtime("train"),
    params:
        cae=stage_params(dfr_keys.model_params),
        pca=lambda wc, input: f"--pca {input.pca}" if "pca" in input.keys() else "",
    shell:
        "python -m dfr --threads {threads} train --features {input.features} --split-json {input.split} {params.pca}"
        " --model {output.model} --history {output.history} --info {output.info}"
        " --params {params.cae:q} > {log} 2>&1"
