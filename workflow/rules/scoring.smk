# Scoring: error maps A(x) for validation and test images, then top-k image scores s(x).


rule maps:
    input:
        unpack(inputs("model", "features_train", "features_test", "split")),
    output:
        PATHS["maps"],
    log:
        LOGS["maps"],
    benchmark:
        bench("maps")
    conda:
        ENV
    threads: THREADS
    resources:
        gpu=GPU,
        mem_mb=mem_mb("maps"),
        runtime=runtime("maps"),
    params:
        maps=stage_params(dfr_keys.maps_params),
    shell:
        "python -m dfr --threads {threads} maps --model {input.model} --train-features {input.features_train}"
        " --test-features {input.features_test} --split-json {input.split} --out {output}"
        " --params {params.maps:q} > {log} 2>&1"


rule ensemble:
    input:
        ensemble_inputs,
    output:
        PATHS["ensemble_maps"],
    log:
        LOGS["ensemble"],
    benchmark:
        bench("ensemble")
    conda:
        ENV
    resources:
        mem_mb=mem_mb("ensemble"),
        runtime=runtime("ensemble"),
    params:
        fusion=lambda wc: P(dfr_plan.fusion_params(cfg_of(wc), wc.dataset, wc.category)),
    shell:
        "python -m dfr ensemble --maps {input} --out {output} --params {params.fusion:q} > {log} 2>&1"


rule scores:
    input:
        unpack(inputs("maps")),
    output:
        PATHS["scores"],
    log:
        LOGS["scores"],
    benchmark:
        bench("scores")
    conda:
        ENV
    resources:
        mem_mb=mem_mb("scores"),
        runtime=runtime("scores"),
    params:
        scores=stage_params(dfr_keys.scores_params),
    shell:
        "python -m dfr scores --maps {input.maps} --out {output} --params {params.scores:q} > {log} 2>&1"


rule bundle:
    input:
        unpack(bundle_inputs),
    output:
        PATHS["bundle"],
    log:
        LOGS["bundle"],
    benchmark:
        bench("bundle")
    conda:
        ENV
    resources:
        mem_mb=mem_mb("bundle"),
        runtime=runtime("bundle"),
    params:
        bundle=stage_params(lambda c: dfr_keys.bundle_params(c, dfr_plan.members(c))),
    shell:
        "python -m dfr bundle --model {input.models} --maps {input.maps} --metrics {input.metrics} --out {output}"
        " --params {params.bundle:q}"
        " > {log} 2>&1"
