"""Where every artifact, log and benchmark record lives: one definition for the rules and the comparison.

The fourth module of the planning layer (overrides → config → keys → layout → workload → plan). What several
experiments (or a study's variants) can share lives under a key made of exactly what shapes it
(:mod:`dfr.keys`): the feature cache under the feature key, the split under its own, PCA and the model
(with its history, sidecar and error maps) under theirs, an ensemble's fused maps under the ensemble's key.
What depends on top-k or thresholds (scores, metrics, plots, bundle, tables) is the experiment's own, and
its rule's params hold what shapes it.
"""

from __future__ import annotations


def patterns(results: str) -> dict[str, str]:
    """Every per-category artifact as a Snakemake wildcard pattern."""
    r = results.rstrip("/")
    prep, feats = f"{r}/prepared/{{dataset}}/{{category}}", f"{r}/features/{{dataset}}/{{category}}/{{fkey}}"
    models, exp = f"{r}/models/{{dataset}}/{{category}}", f"{r}/{{experiment}}/{{dataset}}/{{category}}"
    return {
        "synthetic": f"{r}/datasets/{{dataset}}/{{category}}/synthetic.json",
        "index": f"{prep}/index.csv", "split": f"{prep}/split-{{skey}}.json",
        "features": feats + "/{split}.h5", "features_train": f"{feats}/train.h5",
        "features_test": f"{feats}/test.h5",
        "pca": f"{models}/{{pkey}}/pca.json", "model": f"{models}/{{mkey}}/model.pt",
        "history": f"{models}/{{mkey}}/history.csv", "model_info": f"{models}/{{mkey}}/model.json",
        "maps": f"{models}/{{mkey}}/maps.h5", "ensemble_maps": f"{models}/{{ekey}}/maps.h5",
        "scores": f"{exp}/scores.csv", "metrics": f"{exp}/metrics.json", "plots": f"{exp}/plots",
        "bundle": f"{exp}/bundle.pt", "submission_part": f"{exp}/submission.tar",
    }


def fill(pattern: str, values: dict) -> str:
    for k, v in values.items():
        pattern = pattern.replace("{" + k + "}", str(v))
    return pattern


# Each rule's log, relative to the results folder (its ``logs/``); a job's benchmark record lies at the same path
# under the results folder's ``benchmarks/``. Two results folders (a CPU run and scripts/gpu-check.sh's GPU run,
# say) never share or overwrite each other's logs and records.
_LOGS = {
    "prepare_dataset": "datasets/{root}.log", "synthetic": "synthetic/{dataset}/{category}.log",
    "index": "index/{dataset}/{category}.log", "split": "split/{dataset}/{category}/{skey}.log",
    "features": "features/{dataset}/{category}/{fkey}/{split}.log",
    "pca": "pca/{dataset}/{category}/{pkey}.log", "train": "train/{dataset}/{category}/{mkey}.log",
    "maps": "maps/{dataset}/{category}/{mkey}.log",
    "ensemble": "ensemble/{dataset}/{category}/{ekey}.log", "tables": "{experiment}/tables/{dataset}.log",
    **{rule: f"{{experiment}}/{rule}/{{dataset}}/{{category}}.log" for rule in ("scores", "metrics", "plots", "bundle")},
    "study": "{experiment}/study.log", "study_manifest": "{experiment}/study_manifest.log",
    "study_timing": "{experiment}/study_timing.log",
    "submission_part": "{experiment}/submission_part/{dataset}/{category}.log",
    "submission": "{experiment}/submission/{dataset}.log",
}


def log_patterns(results: str) -> dict[str, str]:
    """Every rule's log as a Snakemake wildcard pattern, under ``<results>/logs/``."""
    return {rule: f"{results.rstrip('/')}/logs/{p}" for rule, p in _LOGS.items()}


def benchmark_path(log: str) -> str:
    """A job's benchmark record (wall time, peak RSS): its log's path with ``logs/`` made ``benchmarks/``, as
    .tsv (``<results>/logs/x/y.log`` -> ``<results>/benchmarks/x/y.tsv``)."""
    head, sep, tail = log.rpartition("logs/")
    if not sep or (head and not head.endswith("/")):
        raise ValueError(f"{log}: not a log path (no logs/ folder in it)")
    return f"{head}benchmarks/{tail.removesuffix('.log')}.tsv"


def record(results: str, rule: str, values: dict) -> str:
    """The benchmark record of one job of ``rule``, from its wildcard values."""
    return benchmark_path(fill(log_patterns(results)[rule], values))


def table_patterns(results: str) -> dict[str, str]:
    t = f"{results.rstrip('/')}/{{experiment}}/tables"
    return {"csv": f"{t}/{{dataset}}.csv", "md": f"{t}/{{dataset}}.md", "val": f"{t}/{{dataset}}_val_thresholds.csv"}


def submission_pattern(results: str) -> str:
    """MVTec AD 2's leaderboard archive of a dataset (dfr.submission)."""
    return f"{results.rstrip('/')}/{{experiment}}/submission/{{dataset}}.tar.gz"


def table_paths(cfg: dict, dataset: str) -> dict[str, str]:
    return {k: fill(v, {"experiment": cfg["experiment"], "dataset": dataset})
            for k, v in table_patterns(cfg["results"]).items()}


COMPARISON = "comparison"  # a study's own folder beside its variants


def comparison_paths(results: str, study: str) -> dict[str, str]:
    c = f"{results.rstrip('/')}/{study}/{COMPARISON}"
    return {"csv": f"{c}/study.csv", "md": f"{c}/study.md", "best": f"{c}/best.json", "plots": f"{c}/plots",
            "manifest": f"{c}/manifest.json", "timing": f"{c}/timing.csv"}


def reference(cfg: dict, dataset: str) -> str | None:
    """The paper's table to show beside a dataset's: set in the config, else by the dataset's kind."""
    ds = cfg["datasets"][dataset]
    return ds.get("reference") or {"mvtec": "mvtec_ad", "visa": "visa"}.get(ds["kind"])


def dataset_root(cfg: dict, dataset: str) -> str:
    ds = cfg["datasets"][dataset]
    if ds["kind"] == "synthetic":
        return f"{cfg['results'].rstrip('/')}/datasets/{dataset}"
    return (ds["root"] or f"data/{dataset}").rstrip("/")
