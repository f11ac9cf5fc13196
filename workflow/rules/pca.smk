# Optional latent dimension selection by PCA (cae.latent_dim: auto).


rule pca:
    input:
        unpack(inputs("features_train", "split")),
    output:
        PATHS["pca"],
    log:
        LOGS["pca"],
    benchmark:
        bench("pca")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=mem_mb("pca"),
        runtime=runtime("pca"),
    params:
        pca=lambda wc: P(dfr_plan.pca_params(cfg_of(wc), wc.dataset, wc.category)),
    shell:
        "python -m dfr --threads {threads} pca --features {input.features_train} --split-json {input.split} --out {output}"
        " --params {params.pca:q} > {log} 2>&1"
