# Optional latent dimension selection by PCA (cae.latent_dim: auto).

rule pca:
    input:
        features=PATHS["features_train"],
        split=PATHS["split"],
    output:
        PATHS["pca"],
    params:
        pca=P(dfr_config.pca_params(config)),
    threads: 2
    resources:
        mem_mb=lambda wc, attempt: attempt * (RES["mem_mb_min"] + 3000),
        runtime=lambda wc, attempt: attempt * 20,
    log:
        f"logs/{E}/pca/{{dataset}}/{{category}}.log",
    conda:
        ENV
    shell:
        "{DFR} --threads {threads} pca --features {input.features} --split-json {input.split} --out {output}"
        " --params {params.pca:q} > {log} 2>&1"
