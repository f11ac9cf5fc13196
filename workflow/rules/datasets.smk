# Public datasets (MVTec AD, VisA): download (mirrors in order, resumable), verify sha256, extract safely,
# convert VisA to MVTec layout; MVTec AD 2: extracted from the archive its licence page gives (`archive:`).
# Runs only for categories missing under the dataset's root; `.dfr-ready` is written last, so a failed or
# interrupted preparation is never trusted by a rerun.
import re

_DOWNLOADED = {dataset_root(d): d for d, ds in DATASETS.items() if ds["kind"] in ("mvtec", "visa", "mvtec_ad2")}


rule prepare_dataset:
    output:
        "{root}/.dfr-ready",
    log:
        LOGS["prepare_dataset"],
    benchmark:
        bench("prepare_dataset")
    wildcard_constraints:
        root="|".join(re.escape(r) for r in _DOWNLOADED) or "^$",
    conda:
        ENV
    resources:
        mem_mb=mem_mb("prepare_dataset"),
        runtime=runtime("prepare_dataset"),
    params:
        spec=lambda wc: P(DATASETS[_DOWNLOADED[wc.root]]),
    shell:
        "python -m dfr prepare-dataset --root {wildcards.root} --spec {params.spec:q} > {log} 2>&1"
