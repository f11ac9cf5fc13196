# Public datasets: download, verify (sha256), extract safely, convert (VisA) into MVTec layout.

rule prepare_dataset:
    output:
        "{root}/.dfr-ready",
    params:
        dataset=lambda wc: next(d for d in DATASETS if dataset_root(d) == wc.root),
        spec=lambda wc: P(DATASETS[next(d for d in DATASETS if dataset_root(d) == wc.root)]),
    log:
        "logs/datasets/{root}.log",
    conda:
        ENV
    shell:
        "{DFR} prepare-dataset --root {wildcards.root} --spec {params.spec:q} > {log} 2>&1"
