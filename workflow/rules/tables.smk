# Aggregated tables per dataset, like the paper's Tables 1 and 2.

rule tables:
    input:
        lambda wc: [dfr_config.paths(config, wc.dataset, c)["metrics"] for c in DATASETS[wc.dataset]["categories"]],
    output:
        csv=TABLES["csv"],
        md=TABLES["md"],
        val=TABLES["val"],
    resources:
        mem_mb=mem_mb("tables"),
        runtime=runtime("tables"),
    benchmark:
        bench("tables")
    log:
        LOGS["tables"],
    conda:
        ENV
    shell:
        "python -m dfr tables --metrics {input} --dataset {wildcards.dataset} --csv {output.csv} --md {output.md}"
        " --val-csv {output.val} > {log} 2>&1"
