# Aggregated tables per dataset, like the paper's Tables 1 and 2.


rule tables:
    input:
        lambda wc: [dfr_plan.paths(cfg_of(wc), wc.dataset, c)["metrics"] for c in DATASETS[wc.dataset]["categories"]],
    output:
        csv=report(
            TABLES["csv"],
            caption=f"{REPORT}/table.rst",
            category="Tables",
            subcategory="{experiment}",
            labels={"experiment": "{experiment}", "dataset": "{dataset}", "table": "image and pixel metrics"},
        ),
        md=TABLES["md"],
        val=report(
            TABLES["val"],
            caption=f"{REPORT}/table_val.rst",
            category="Tables",
            subcategory="{experiment}",
            labels={"experiment": "{experiment}", "dataset": "{dataset}", "table": "at validation thresholds"},
        ),
    log:
        LOGS["tables"],
    benchmark:
        bench("tables")
    conda:
        ENV
    resources:
        mem_mb=mem_mb("tables"),
        runtime=runtime("tables"),
    params:
        reference=lambda wc: dfr_layout.reference(config, wc.dataset) or "",
        code=dfr_keys.code_version("tables"),
    shell:
        "python -m dfr tables --metrics {input} --dataset {wildcards.dataset} --csv {output.csv} --md {output.md}"
        " --val-csv {output.val} --reference '{params.reference}' > {log} 2>&1"
