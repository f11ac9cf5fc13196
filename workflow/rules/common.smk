# Shared set-up: config validation, paths, and the params of every stage (from the dfr package).
import json
import os
import sys
from pathlib import Path

WORKFLOW_DIR = Path(workflow.basedir) / "workflow"
sys.path.insert(0, str(WORKFLOW_DIR))

from dfr import config as dfr_config  # noqa: E402
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
    ds = DATASETS[dataset]
    if ds["kind"] == "synthetic":
        return f"{R}/datasets/{dataset}"
    if ds["root"]:
        return ds["root"].rstrip("/")
    return f"data/{dataset}"


def category_ready(wildcards):
    """What must exist before a category can be indexed: generated, downloaded, or already there."""
    ds = DATASETS[wildcards.dataset]
    if ds["kind"] == "synthetic":
        return f"{R}/datasets/{wildcards.dataset}/{wildcards.category}/synthetic.json"
    if ds["kind"] in ("mvtec", "visa"):
        if not (Path(dataset_root(wildcards.dataset)) / wildcards.category / "train").is_dir():
            return f"{dataset_root(wildcards.dataset)}/.dfr-ready"
    return []


def exp(path):
    """A per-category artifact of this experiment."""
    return f"{R}/{E}/{{dataset}}/{{category}}/{path}"


def feats(split):
    return f"{R}/features/{{dataset}}/{{category}}/{FKEY}/{split}.h5"


def all_categories():
    return [(d, c) for d, ds in DATASETS.items() for c in ds["categories"]]


def all_targets():
    out = []
    for d, ds in DATASETS.items():
        out += [f"{R}/{E}/tables/{d}.csv", f"{R}/{E}/tables/{d}.md"]
        out += [f"{R}/{E}/{d}/{c}/plots/.done" for c in ds["categories"]]
    return out
