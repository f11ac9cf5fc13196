# Shared set-up: config validation, paths, and the params of every stage (from the dfr package).
import json
import shlex
import sys
from pathlib import Path

WORKFLOW_DIR = Path(workflow.basedir) / "workflow"
sys.path.insert(0, str(WORKFLOW_DIR))

from dfr import config as dfr_config  # noqa: E402
from dfr import data as dfr_data  # noqa: E402
from dfr import resources as dfr_resources  # noqa: E402
from dfr.io import DFRError  # noqa: E402

try:
    config = dfr_config.validate(config, "config")
except DFRError as e:
    raise WorkflowError(str(e)) from None

R = config["results"].rstrip("/")
E = config["experiment"]
FKEY = dfr_config.feature_key(config)
DATASETS = config["datasets"]

# Every rule runs `python -m dfr <stage>` from this checkout (also inside conda envs made by --sdm conda
# and on SLURM nodes): the shell prefix puts the package on PYTHONPATH and, outside conda, this
# interpreter first on PATH. Runtime-only settings (batch size, workers, device, ...) change how fast an
# artifact is made, not what it is: they travel in DFR_RUNTIME, not in params, so editing them reruns nothing.
_CONDA = "conda" in str(getattr(workflow.deployment_settings, "deployment_method", "")).lower()
_PREFIX = (
    "set -euo pipefail; "
    f"export PYTHONPATH={shlex.quote(str(WORKFLOW_DIR))}${{PYTHONPATH:+:$PYTHONPATH}}; "
    f"export DFR_RUNTIME={shlex.quote(json.dumps(dfr_config.feature_runtime(config)))}; "
    + ("" if _CONDA else f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; ")
)
shell.prefix(_PREFIX.replace("{", "{{").replace("}", "}}"))  # the prefix is formatted like a command
ENV = "../../envs/dfr.yaml"

wildcard_constraints:
    dataset="[A-Za-z0-9_.-]+",
    category="[A-Za-z0-9_.-]+",
    split="train|test",


def P(params):
    """A stage's params as one JSON string (what the rule records for rerun decisions)."""
    return json.dumps(params, sort_keys=True)


def cae_inputs(wildcards):
    """The CAE's inputs: cached training features, the split, and pca.json when d is chosen by PCA."""
    out = {"features": PATHS["features_train"].format(**wildcards), "split": PATHS["split"].format(**wildcards)}
    if config["cae"]["latent_dim"] == "auto":
        out["pca"] = PATHS["pca"].format(**wildcards)
    return out


def dataset_root(dataset):
    return dfr_config.dataset_root(config, dataset)


def category_ready(wildcards):
    """What must exist before a category can be indexed: generated, downloaded, or already there."""
    ds = DATASETS[wildcards.dataset]
    if ds["kind"] == "synthetic":
        return dfr_config.paths(config, wildcards.dataset, wildcards.category)["synthetic"]
    if ds["kind"] in ("mvtec", "visa"):
        if not (Path(dataset_root(wildcards.dataset)) / wildcards.category / "train").is_dir():
            return f"{dataset_root(wildcards.dataset)}/.dfr-ready"
    return []


PATHS = dfr_config.paths(config)  # wildcard patterns of every per-category artifact
TABLES = dfr_config.table_paths(config)  # wildcard patterns of a dataset's tables


def all_targets():
    out = []
    for d, ds in DATASETS.items():
        t = dfr_config.table_paths(config, d)
        out += [t["csv"], t["md"]]
        out += [dfr_config.paths(config, d, c)[k] for c in ds["categories"] for k in ("plots_done", "bundle")]
    return out


# ---- resources: what a job asks a scheduler for, derived from what it processes (dfr.resources) ----
RES = config["resources"]

# Run locally (--cores all), jobs start only while their declared mem_mb fits in the memory available now,
# so that many categories' jobs at once never exhaust RAM; `--resources mem_mb=N` sets another budget.
if workflow.local_exec and "mem_mb" not in workflow.global_resources:
    import psutil

    workflow.register_resource("mem_mb", int(psutil.virtual_memory().available / 2**20))
GPU = RES["gpu"]
THREADS = RES["threads"]


def _estimate(rule, what):
    def f(wildcards, attempt):
        return attempt * dfr_resources.estimate(config, rule, wildcards.get("dataset"), wildcards.get("category"),
                                                wildcards.get("split"))[what]

    return f


def mem_mb(rule):
    """The rule's memory in MB from the images, pixels and channels it processes; times the attempt."""
    return _estimate(rule, "mem_mb")


def runtime(rule):
    """The rule's time limit in minutes, likewise."""
    return _estimate(rule, "runtime")


LOGS = dfr_config.log_paths(config)  # wildcard patterns of every rule's log


def bench(rule):
    """The benchmark record (wall time, peak RSS) of a job: its log's path under benchmarks/, as .tsv."""
    return dfr_config.benchmark_path(LOGS[rule])


# Seconds-long bookkeeping runs on the submitting node under a cluster executor; downloads too, since
# compute nodes often have no internet access.
localrules:
    all,
    bundle,
    prepare_dataset,
    synthetic,
    index,
    split,
    scores,
    tables,
