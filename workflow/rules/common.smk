# Shared set-up: config validation, paths, and the params of every stage (from the dfr package).
import json
import os
import sys
from pathlib import Path

WORKFLOW_DIR = Path(workflow.basedir) / "workflow"
sys.path.insert(0, str(WORKFLOW_DIR))

from dfr import config as dfr_config  # noqa: E402
from dfr.backbones import FUSED_CHANNELS  # noqa: E402
from dfr.io import DFRError  # noqa: E402

try:
    config = dfr_config.validate(config, "config")
except DFRError as e:
    raise WorkflowError(str(e)) from None

R = config["results"].rstrip("/")
E = config["experiment"]
FKEY = dfr_config.feature_key(config)
DATASETS = config["datasets"]

# Runtime-only settings (batch size, workers, device, ...) change how fast an artifact is made, not what it
# is: they travel in the environment, not in params, so editing them reruns nothing.
os.environ["DFR_RUNTIME"] = json.dumps(dfr_config.feature_runtime(config))

# The package runs from this checkout (also inside conda envs made by --sdm conda and on SLURM nodes).
_PY = "python" if "conda" in str(getattr(workflow.deployment_settings, "deployment_method", "")).lower() \
    else sys.executable
DFR = f"PYTHONPATH={WORKFLOW_DIR}${{PYTHONPATH:+:$PYTHONPATH}} {_PY} -m dfr"
ENV = "../../envs/dfr.yaml"

wildcard_constraints:
    dataset="[A-Za-z0-9_.-]+",
    category="[A-Za-z0-9_.-]+",
    split="train|test",


def P(params):
    """A stage's params as one JSON string (what the rule records for rerun decisions)."""
    return json.dumps(params, sort_keys=True)


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
        out += [dfr_config.paths(config, d, c)["plots_done"] for c in ds["categories"]]
    return out


# ---- resources: what a job asks a scheduler for, derived from config (and the index once it exists) ----
RES = config["resources"]
GPU = RES["gpu"]
THREADS = RES["threads"]


def n_images(wildcards, split=None):
    """Images of a category (from its index once it exists; a generous guess before)."""
    path = Path(dfr_config.paths(config, wildcards.dataset, wildcards.category)["index"])
    if not path.is_file():
        return 500
    import pandas as pd

    df = pd.read_csv(path, usecols=["split"])
    return int(len(df) if split is None else (df.split == split).sum())


def feature_mb_per_image():
    side = config["data"]["image_size"] // 8
    return FUSED_CHANNELS.get(config["features"]["backbone"], 1536) * side * side * 4 / 2**20


def features_mem_mb(wildcards, attempt):
    f = config["features"]
    return attempt * (RES["mem_mb_min"] + 2000 + 60 * f["batch_size"] + 1000 * f["num_workers"])


def features_runtime(wildcards, attempt):
    # minutes: start-up + ~0.1 s an image (decoding bound on a GPU node), doubled on each retry
    return attempt * int(10 + n_images(wildcards, wildcards.split) * 0.1 / 60 * 4)


def train_mem_mb(wildcards, attempt):
    # the cache held in RAM when it fits (2 GiB), plus the model and torch
    cache = min(2048, n_images(wildcards, "train") * feature_mb_per_image())
    return attempt * int(RES["mem_mb_min"] + 2000 + cache)


def train_runtime(wildcards, attempt):
    per_epoch_s = 1 + n_images(wildcards, "train") * feature_mb_per_image() / 200  # ~200 MB/s from HDF5
    return attempt * int(10 + config["cae"]["epochs"] * per_epoch_s / 60 * 2)


# Seconds-long bookkeeping runs on the submitting node under a cluster executor; downloads too, since
# compute nodes often have no internet access.
localrules:
    all,
    prepare_dataset,
    synthetic,
    index,
    split,
    scores,
    tables,
