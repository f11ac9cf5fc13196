# Scoring: error maps A(x) for validation and test images, then top-k image scores s(x).

rule maps:
    input:
        model=PATHS["model"],
        train=PATHS["features_train"],
        test=PATHS["features_test"],
        split=PATHS["split"],
    output:
        PATHS["maps"],
    threads: THREADS
    resources:
        gpu=GPU,
        mem_mb=train_mem_mb,
        runtime=lambda wc, attempt: attempt * 20,
    log:
        f"logs/{E}/maps/{{dataset}}/{{category}}.log",
    conda:
        ENV
    shell:
        "{DFR} --threads {threads} maps --model {input.model} --train-features {input.train}"
        " --test-features {input.test} --split-json {input.split} --out {output} > {log} 2>&1"


rule scores:
    input:
        PATHS["maps"],
    output:
        PATHS["scores"],
    params:
        top_k=config["scoring"]["top_k"],
    log:
        f"logs/{E}/scores/{{dataset}}/{{category}}.log",
    conda:
        ENV
    shell:
        "{DFR} scores --maps {input} --out {output} --top-k {params.top_k} > {log} 2>&1"
