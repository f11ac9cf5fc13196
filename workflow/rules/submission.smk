# MVTec AD 2's leaderboard submission (dfr.stages.submission): each category's private test images scored with its
# bundle and binarised at the threshold its validation images set, then one archive per dataset to upload.


rule submission_part:
    input:
        bundle=PATHS["bundle"],
        metrics=PATHS["metrics"],
        index=PATHS["index"],
    output:
        PATHS["submission_part"],
    log:
        LOGS["submission_part"],
    benchmark:
        bench("submission_part")
    conda:
        ENV
    threads: THREADS
    resources:
        mem_mb=mem_mb("submission_part"),
        runtime=runtime("submission_part"),
        gpu=GPU,
    params:
        code=dfr_keys.code_version("submission"),
    shell:
        "python -m dfr --threads {threads} submission-part --bundle {input.bundle} --metrics {input.metrics}"
        " --index {input.index} --category {wildcards.category} --out {output} > {log} 2>&1"


rule submission:
    input:
        lambda wc: [
            dfr_plan.paths(cfg_of(wc), wc.dataset, c)["submission_part"] for c in DATASETS[wc.dataset]["categories"]
        ],
    output:
        SUBMISSION,
    log:
        LOGS["submission"],
    benchmark:
        bench("submission")
    conda:
        ENV
    resources:
        mem_mb=mem_mb("submission"),
        runtime=runtime("submission"),
    shell:
        "python -m dfr submission --parts {input} --out {output} > {log} 2>&1"
