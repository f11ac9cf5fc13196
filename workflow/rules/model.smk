# The model on f(x), whichever head the config names (dfr.heads), fitted on cached normal features only (never
# runs the backbone).


rule train:
    input:
        unpack(model_inputs),
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
        model=stage_params(dfr_keys.model_params),
        pca=lambda wc, input: f"--pca {input.pca}" if "pca" in input.keys() else "",
    shell:
        "python -m dfr --threads {threads} train --features {input.features} --split-json {input.split} {params.pca}"
        " --model {output.model} --history {output.history} --info {output.info}"
        " --params {params.model:q} > {log} 2>&1"
