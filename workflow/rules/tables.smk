# Aggregated tables per dataset, like the paper's Tables 1 and 2.

rule tables:
    input:
        lambda wc: [f"{R}/{E}/{wc.dataset}/{c}/metrics.json" for c in DATASETS[wc.dataset]["categories"]],
    output:
        csv=f"{R}/{E}/tables/{{dataset}}.csv",
        md=f"{R}/{E}/tables/{{dataset}}.md",
        val=f"{R}/{E}/tables/{{dataset}}_val_thresholds.csv",
    log:
        f"logs/{E}/tables/{{dataset}}.log",
    conda:
        ENV
    shell:
        "{DFR} tables --metrics {input} --dataset {wildcards.dataset} --csv {output.csv} --md {output.md}"
        " --val-csv {output.val} > {log} 2>&1"
