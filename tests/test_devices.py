"""The device in the keys and the record (dfr.planning.devices): a GPU-made f(x) or model never stands in for a CPU-made
one, `device: auto` names the device the jobs will run on (not the planning node's), TF32 is set explicitly, and
every artifact's provenance names its device."""

import json

import pytest
import torch

from conftest import TINY, place_weights, snakemake
from dfr import compute
from dfr.planning import devices, keys
from dfr import io
from dfr.planning import config as dfr_config
from dfr.io import DFRError


def _cfg(**over):
    return dfr_config.validate({**TINY, **over}, "test")


def test_auto_resolves_from_the_gpus_the_jobs_get():
    assert devices.job_device("auto", 0) == "cpu" and devices.job_device("auto", 2) == "cuda"
    assert devices.job_device("cpu", 4) == "cpu" and devices.job_device("cuda:1", 0) == "cuda:1"


def test_visible_gpus_reads_cuda_visible_devices(monkeypatch):
    for env, n in (("0,1", 2), ("3", 1), ("", 0), ("-1", 0)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
        assert devices.visible_gpus() == n, env


def test_gpu_made_artifacts_have_keys_of_their_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    place_weights(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cpu, auto, gpu = _cfg(device="cpu"), _cfg(device="auto"), _cfg(device="cuda")
    assert keys.feature_key(cpu) == keys.feature_key(auto) != keys.feature_key(gpu)
    assert keys.model_key(cpu) == keys.model_key(auto) != keys.model_key(gpu)
    assert "device_class" not in keys.feature_params(cpu)  # CPU keys as before the device was keyed
    assert keys.feature_params(gpu)["device_class"] == keys.maps_params(gpu)["device_class"] == "cuda"
    # which GPU is runtime-only: cuda and cuda:1 make the same artifacts
    assert keys.feature_key(gpu) == keys.feature_key(_cfg(device="cuda:1"))
    # `auto` on this machine with a GPU visible: the GPU's keys
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert keys.feature_key(_cfg(device="auto")) == keys.feature_key(gpu)


def test_a_job_runs_on_the_device_class_its_key_names():
    assert compute.resolve_device("auto", "cpu").type == "cpu"
    with pytest.raises(DFRError, match="key names device class 'cuda'"):
        compute.resolve_device("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(DFRError, match="no CUDA GPU is visible.*key names a GPU"):
            compute.resolve_device("auto", "cuda")


def test_tf32_is_set_explicitly_off_unless_autocast():
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # cuDNN's default
    compute.resolve_device("cpu", "cpu")
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert io.device_info()["tf32"] is False and io.device_info()["type"] == "cpu"
    compute.resolve_device("cpu", "cpu", amp="bf16")
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    compute.resolve_device("cpu", "cpu")
    assert io.provenance({})["device"]["tf32"] is False


def _planned_feature_keys(out: str) -> set[str]:
    import re

    return set(re.findall(r"results/features/synth/\w+/([\w.-]+)/train\.h5", out))


def test_a_cluster_plan_keys_the_gpu_nodes_device_not_the_submitting_nodes(tmp_path, monkeypatch):
    """Planned under the SLURM profile on a node without a GPU, `device: auto` with GPU stages asking for a GPU
    (resources.gpu: 1) plans GPU keys; with resources.gpu: 0, CPU keys. Run locally here, auto plans CPU keys."""
    from conftest import ROOT

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    place_weights(tmp_path)
    monkeypatch.chdir(tmp_path)
    want = {device: keys.feature_key(_cfg(device=device)) for device in ("cpu", "cuda")}
    slurm = ("--profile", str(ROOT / "profiles" / "slurm"))
    runs = {("slurm", 1): slurm, ("slurm", 0): slurm, ("local", 1): ()}
    got = {}
    for (where, gpu), args in runs.items():
        cfg = {**TINY, "device": "auto", "resources": {"gpu": gpu}}
        r = snakemake(tmp_path, cfg, "-n", *args)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        got[(where, gpu)] = _planned_feature_keys(r.stdout + r.stderr)
    assert got[("slurm", 1)] == {want["cuda"]}
    assert got[("slurm", 0)] == got[("local", 1)] == {want["cpu"]}


def test_the_slurm_dry_run_says_how_many_submissions_it_makes(tmp_path):
    """`python -m dfr.tools.slurm_plan` (make slurm-dry-run) runs the dry run under profiles/slurm and counts what
    reaches the queue: one submission per gpu_stages group job (each category's features, pca, train and maps),
    one per other job with outputs, none for the `default` target."""
    import subprocess
    import sys

    import yaml

    from conftest import ROOT, planned_jobs
    from dfr.tools import slurm_plan

    place_weights(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(TINY))
    r = subprocess.run([sys.executable, "-m", "dfr.tools.slurm_plan", "--snakefile", str(ROOT / "Snakefile"),
                        "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")],
                       capture_output=True, text=True, cwd=ROOT / "workflow", timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    jobs = planned_jobs(r.stdout + r.stderr)
    grouped = sum(jobs[s] for s in ("features", "pca", "train", "maps"))
    local = sum(n for s, n in jobs.items() if s in ("synthetic", "split", "scores", "tables"))  # localrules
    single = sum(jobs.values()) - grouped - local
    n_cat = len(TINY["datasets"]["synth"]["categories"])
    want = slurm_plan.summary({"groups": n_cat, "grouped": grouped, "single": single, "local": local,
                                "submissions": n_cat + single})
    assert r.stdout.rstrip().endswith(want), r.stdout[-600:]


def test_submission_counting_reads_groups_local_and_target_jobs():
    text = "\n".join([
        "Job stats:", "job  count", "rule  1",  # the table before the plan is not read
        "[Mon Dec  7 04:29:14 2026]", "rule index:", "    output: a", "",
        "[Mon Dec  7 04:29:14 2026]", "localrule tables:", "    output: t", "",
        "[Mon Dec  7 04:29:14 2026] Group job gpu_stages (jobs in lexicogr. order):", "",
        "    [Mon Dec  7 04:29:14 2026]", "    rule features:", "        output: f",
        "    [Mon Dec  7 04:29:14 2026]", "    rule maps:", "        output: m", "",
        "[Mon Dec  7 04:29:14 2026]", "rule default:", "    input: t", "",
        "Job stats:", "rule index:"])
    from dfr.tools import slurm_plan

    assert slurm_plan.count(text) == {"groups": 1, "grouped": 2, "single": 1, "local": 1, "submissions": 2}
    assert slurm_plan.count(text, {"index"}) == {"groups": 1, "grouped": 2, "single": 0, "local": 2,
                                                  "submissions": 1}
    assert {"split", "scores", "tables", "synthetic", "default"} <= slurm_plan.local_rules()
