# Shared set-up: the config validated, the plan of what to compute (experiments x study variants x ensemble
# members), paths, and the params of every stage (from the dfr package's planning layer: no torch here).
import json
import os
import re
import sys
from pathlib import Path

WORKFLOW_DIR = Path(workflow.current_basedir).parent  # workflow/, whichever Snakefile was run
sys.path.insert(0, str(WORKFLOW_DIR))

from dfr.planning import config as dfr_config  # noqa: E402
from dfr.stages import data as dfr_data  # noqa: E402
from dfr.planning import devices as dfr_devices  # noqa: E402
from dfr.planning import failures as dfr_failures  # noqa: E402
from dfr.planning import fetches as dfr_fetches  # noqa: E402
from dfr.planning import keys as dfr_keys  # noqa: E402
from dfr.planning import layout as dfr_layout  # noqa: E402
from dfr.planning import plan as dfr_plan  # noqa: E402
from dfr.planning import resources as dfr_resources  # noqa: E402
from dfr.planning import runlock as dfr_runlock  # noqa: E402
from dfr import io as dfr_io  # noqa: E402
from dfr.io import DFRError  # noqa: E402

try:
    config = dfr_config.validate(config, "config")
    # `device: auto` resolved for where the jobs run (dfr.planning.devices): locally, the GPUs this machine shows; under
    # a cluster executor (or `cluster: true`, which profiles/slurm sets so that its dry runs plan the same), the
    # GPUs a GPU stage's job asks for, not the submitting node's. The feature and model keys name the result.
    _VISIBLE_GPUS = dfr_devices.visible_gpus() if workflow.local_exec else 0  # a submitting node's are not asked
    _CLUSTER = config["cluster"] or not workflow.local_exec
    config["device"] = dfr_devices.job_device(
        config["device"], config["resources"]["gpu"] if _CLUSTER else _VISIBLE_GPUS
    )
    PLAN = dfr_plan.Plan(config)
except DFRError as e:
    raise WorkflowError(str(e)) from None
CFGS = PLAN.experiments  # experiment -> its config: this one, or one per variant of its study

R = config["results"].rstrip("/")
E = config["experiment"]
STUDY = bool(config["study"])
DATASETS = config["datasets"]

BY_KEY = PLAN.by_key  # each shared artifact's key -> a config that makes it
cfg_of = PLAN.cfg_of  # the config that a job's wildcards name


# Every rule runs `python -m dfr <stage>` from this checkout (also inside conda envs made by --sdm conda
# and on SLURM nodes, where the job's Snakemake parses this file again): the environment that jobs inherit
# puts the package on PYTHONPATH and, outside conda, this interpreter first on PATH. Runtime-only settings
# (batch size, workers, device, ...) change how fast an artifact is made, not what it is: they travel in
# DFR_RUNTIME, not in params, so editing them reruns nothing. So does where each local weights file lies
# (its content hash is in the feature key). In the environment rather than a shell prefix, so that a failed
# job's command, which Snakemake prints, is the rule's own short one.
RUNTIME = {
    **dfr_keys.feature_runtime(config),
    "weights_files": dfr_keys.weights_files([m for c in CFGS.values() for m in [c, *dfr_plan.members(c)]]),
}
# What the run will download (data sets, weights), said when it is planned, a dry run included; not again when
# a cluster job parses this file on its node.
if not workflow.remote_exec:
    _FETCH = dfr_fetches.needed([m for c in CFGS.values() for m in [c, *dfr_plan.members(c)]])
    if _FETCH:
        print("This run will download:\n" + "\n".join(f"  - {f}" for f in _FETCH), file=sys.stderr)
    for _line in dfr_plan.missing_folders(config):
        print(f"Warning: {_line}", file=sys.stderr)
_CONDA = "conda" in str(getattr(workflow.deployment_settings, "deployment_method", "")).lower()


def _first_on(var, path):
    parts = [p for p in os.environ.get(var, "").split(os.pathsep) if p and p != path]
    os.environ[var] = os.pathsep.join([path, *parts])


_first_on("PYTHONPATH", str(WORKFLOW_DIR))
if not _CONDA:
    _first_on("PATH", str(Path(sys.executable).parent))
os.environ.update(DFR_RUNTIME=json.dumps(RUNTIME))
shell.prefix("set -euo pipefail; ")
ENV = "../../envs/dfr.yaml"
REPORT = "../report"


def _one_of(names):
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "^$"


wildcard_constraints:
    dataset="[A-Za-z0-9_.-]+",
    category="[A-Za-z0-9_.-]+",
    split="train|test",
    experiment=_one_of(CFGS),
    fkey=_one_of(BY_KEY["fkey"]),
    skey=_one_of(BY_KEY["skey"]),
    pkey=_one_of(BY_KEY["pkey"]),
    mkey=_one_of(BY_KEY["mkey"]),
    ekey=_one_of(BY_KEY["ekey"]),


def P(params):
    """A stage's params as one JSON string (what the rule records for rerun decisions)."""
    return json.dumps(params, sort_keys=True)


def write_manifest(manifest: str, out: str, log: str) -> None:
    """The study_manifest job: its params (one JSON string) written to its output, and a line to its log."""
    dfr_io.write_json(out, json.loads(manifest))
    dfr_io.write_text(log, f"{out}: {len(manifest)} bytes of JSON\n")


def paths_of(wildcards):
    """Every artifact path of the job's category under the job's config."""
    return dfr_plan.paths(cfg_of(wildcards), wildcards.dataset, wildcards.category)


def inputs(*names):
    """An input function: the named artifacts of the job's category under the job's config."""

    def f(wildcards):
        p = paths_of(wildcards)
        return {n: p[n] for n in names}

    return f


def stage_params(fn):
    """A params function: ``fn(config)`` of the job's config, as JSON."""
    return lambda wildcards: P(fn(cfg_of(wildcards)))


def model_inputs(wildcards):
    """A model's inputs: cached training features, the split, and pca.json where its head uses PCA's d."""
    p, cfg = paths_of(wildcards), cfg_of(wildcards)
    out = {"features": p["features_train"], "split": p["split"]}
    if dfr_keys.uses_pca(cfg):
        out["pca"] = p["pca"]
    return out


def ensemble_inputs(wildcards):
    """The maps of each member of the job's ensemble, in the members' order."""
    cfg = cfg_of(wildcards)
    return [dfr_plan.paths(m, wildcards.dataset, wildcards.category)["maps"] for m in dfr_plan.members(cfg)]


def bundle_inputs(wildcards):
    """A bundle's inputs: each member's model (or the single model), the maps scored, the metrics."""
    cfg, p = cfg_of(wildcards), paths_of(wildcards)
    models = [dfr_plan.paths(m, wildcards.dataset, wildcards.category)["model"] for m in dfr_plan.members(cfg)]
    return {"models": models or [p["model"]], "maps": p["maps"], "metrics": p["metrics"]}


def dataset_root(dataset):
    return dfr_layout.dataset_root(config, dataset)


def category_files(wildcards):
    """The category's files on disk (names, sizes, modification times; dfr.stages.data.fingerprint). Not cached:
    Snakemake evaluates it again when the job is about to run, after a download or generation made the files.
    A param of the index and of each job that reads it. An image or mask added, removed, replaced or edited
    re-indexes the category and reruns what depends on it, and nothing else; after a failed index (its output
    removed), the next run indexes again instead of trusting what the old index made."""
    return dfr_data.fingerprint(dataset_root(wildcards.dataset), wildcards.category)


def category_ready(wildcards):
    """What must exist before a category can be indexed: generated, downloaded, or already there."""
    ds = DATASETS[wildcards.dataset]
    if ds["kind"] == "synthetic":
        return dfr_plan.paths(config, wildcards.dataset, wildcards.category)["synthetic"]
    if ds["kind"] in ("mvtec", "visa", "mvtec_ad2"):
        if not (Path(dataset_root(wildcards.dataset)) / wildcards.category / "train").is_dir():
            return f"{dataset_root(wildcards.dataset)}/.dfr-ready"
    return []


PATHS = dfr_layout.patterns(R)  # wildcard patterns of every per-category artifact
TABLES = dfr_layout.table_patterns(R)  # wildcard patterns of a dataset's tables
SUBMISSION = dfr_layout.submission_pattern(R)  # MVTec AD 2's leaderboard archive of a dataset
COMPARISON = PLAN.comparison_paths()  # a study's comparison


def all_targets():
    return PLAN.targets()


# ---- resources: what a job asks a scheduler for, derived from what it processes (dfr.planning.resources) ----
RES = config["resources"]

# Run locally (--cores all), jobs start only while their declared mem_mb fits in the memory available now,
# so that many categories' jobs at once never exhaust RAM; `--resources mem_mb=N` sets another budget.
if workflow.local_exec and "mem_mb" not in workflow.global_resources:
    import psutil

    workflow.register_resource("mem_mb", int(psutil.virtual_memory().available / 2**20))
GPU = RES["gpu"]
THREADS = RES["threads"]
# Run locally, a GPU stage's job holds one of the GPUs visible (dfr.planning.devices.visible_gpus), so that no more
# GPU jobs run at once than there are GPUs; without a GPU they ask for none. `--resources gpu=N` sets another
# budget (N=1 on a CPU machine runs them one at a time).
if workflow.local_exec and "gpu" not in workflow.global_resources:
    workflow.register_resource("gpu", _VISIBLE_GPUS)
    if _VISIBLE_GPUS == 0:
        GPU = 0


def _estimate(rule, what):
    def f(wildcards, attempt):
        return (
            attempt
            * dfr_resources.estimate(
                cfg_of(wildcards), rule, wildcards.get("dataset"), wildcards.get("category"), wildcards.get("split")
            )[what]
        )

    return f


# the study's timing: every variant in one job (dfr.planning.resources.timing_estimate)
TIMING_ESTIMATE = (
    dfr_resources.timing_estimate(list(CFGS.values()), PLAN.timed_categories(), dfr_keys.TIMING) if STUDY else {}
)


def mem_mb(rule):
    """The rule's memory in MB from the images, pixels and channels it processes; times the attempt."""
    return _estimate(rule, "mem_mb")


def runtime(rule):
    """The rule's time limit in minutes, likewise."""
    return _estimate(rule, "runtime")


LOGS = dfr_layout.log_patterns(R)  # wildcard patterns of every rule's log, under <results>/logs/


def bench(rule):
    """The benchmark record (wall time, peak RSS) of a job: its log's path under <results>/benchmarks/, as .tsv."""
    return dfr_layout.benchmark_path(LOGS[rule])


# Seconds-long bookkeeping runs on the submitting node under a cluster executor; downloads too, since
# compute nodes often have no internet access. Not the index (it decodes every image of a category: 4.3 min
# over the rehearsal's categories, 0.7 GB peak) nor the bundle (best.yaml's writes 0.94 GB): they are jobs.
localrules:
    all,
    default,
    prepare_dataset,
    synthetic,
    split,
    scores,
    tables,
    study_manifest,
    study,


# One run per results folder, whichever working directory it starts from (dfr.planning.runlock): taken when jobs are
# about to start, released when the run ends.
onstart:
    try:
        dfr_runlock.acquire(R)
    except DFRError as e:
        raise WorkflowError(str(e)) from None


onsuccess:
    dfr_runlock.release(R)


onerror:
    dfr_runlock.release(R)
