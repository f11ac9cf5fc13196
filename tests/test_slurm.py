"""The tiny demo DAG through a real single-node SLURM cluster (scripts/slurm-cluster.sh) and the project's
profile: same artifacts as a local run, GPU rules on the GPU partition with --gpus, failures reported."""

import os
import re
import shutil
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from test_workflow import TINY, planned_jobs, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.extended]


def needs_slurm(test):
    """A test on the real single-node cluster (CI installs it)."""
    test = pytest.mark.skipif(shutil.which("sbatch") is None or shutil.which("slurmctld") is None,
                              reason="SLURM is not installed (scripts/slurm-cluster.sh install, as root on Debian)")(test)
    return pytest.mark.skipif(os.geteuid() != 0, reason="starting slurmctld/slurmd/munged needs root")(test)
CLUSTER = ROOT / "scripts" / "slurm-cluster.sh"
CFG = {**TINY, "datasets": {"synth": {**TINY["datasets"]["synth"], "categories": ["disc"]}},
       "resources": {"gpu": 1, "threads": 2, "mem_mb_min": 500}}
CLUSTER_ARGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
                "--set-threads", "features=2", "pca=2", "train=2", "maps=2", "--verbose"]
SLURM_ARGS = ["--profile", str(ROOT / "profiles" / "slurm"), *CLUSTER_ARGS]
GPU_RULES = {"features", "train", "maps"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "DFR_SLURM_DIR": str(state)}
    t0 = time.perf_counter()
    subprocess.run([str(CLUSTER), "up"], check=True, env=env, capture_output=True, text=True)
    print(f"SLURM up in {time.perf_counter() - t0:.1f} s")
    yield state
    subprocess.run([str(CLUSTER), "down"], env=env, capture_output=True)


def _sbatch_calls(out: str) -> list[tuple[str, str]]:
    """(rule, or "gpu_stages" for the group job, and the sbatch arguments) of every submission, in order."""
    calls = []
    for line in out.splitlines():
        m = re.search(r"sbatch call: (sbatch .*?) --wrap", line)
        if m:
            comment = re.search(r"--comment rule_(\S+)", m.group(1)).group(1)  # rule_<rule>_wildcards_… or
            name = "gpu_stages" if comment.startswith("gpu_stages") else comment.split("_wildcards")[0]  # group
            calls.append((name, re.sub(r" --(job-name|output) \S+", "", m.group(1))))
    return calls


def ungrouped_profile(tmp_path):
    """profiles/slurm without its job grouping: one sbatch job per rule."""
    prof = tmp_path / "profile-ungrouped"
    prof.mkdir()
    text = (ROOT / "profiles" / "slurm" / "config.yaml").read_text()
    text = re.sub(r"(?ms)^groups:\n.*?(?=^set-resources:)", "", text)
    assert "\ngroups:" not in text and "\ngroup-components:" not in text and "set-resources:" in text
    (prof / "config.yaml").write_text(text)
    return prof


@needs_slurm
def test_slurm_run_matches_local_run(cluster, tiny_run, tmp_path):
    """One category through the profile on the cluster, against the same category of the session's local run
    (TINY; the resources this config sets change how jobs are placed, not what they make)."""
    local, remote = tiny_run, tmp_path / "slurm"
    remote.mkdir()
    t0 = time.perf_counter()
    r = snakemake(remote, CFG, *SLURM_ARGS)
    t_slurm = time.perf_counter() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    calls = _sbatch_calls(out)
    print(f"SLURM {t_slurm:.0f} s (one category); {len(calls)} sbatch calls with job grouping")
    for rule, call in calls:
        print(f"{rule}: {call}")
    # the category's GPU stages (features train + test, pca, train, maps) are one allocation; the index (it
    # decodes every image) and the bundle run on compute nodes, not the submitting one
    assert sorted(r for r, _ in calls) == ["bundle", "gpu_stages", "index", "metrics", "plots"], calls
    for rule, call in calls:
        if rule == "gpu_stages":
            assert " -p gpu " in call and "--gpus=1" in call, call
            mem = int(re.search(r"--mem (\d+)", call).group(1))
            declared = [int(m) for m in re.findall(r"mem_mb=(\d+)", out.split("Group job gpu_stages")[1]
                                                               .split("Select jobs")[0])]
            assert mem == max(declared), (mem, declared)  # stages run one after another: the largest
        else:
            assert " -p cpu " in call and "--gpus" not in call, call
    exp = "results/tiny/synth/disc"
    a = pd.read_csv(local / exp / "scores.csv").set_index("image_id")
    b = pd.read_csv(remote / exp / "scores.csv").set_index("image_id")
    assert list(a.index) == list(b.index)
    np.testing.assert_allclose(a.score, b.score, rtol=1e-5)
    print("max relative score difference:", float(np.max(np.abs(a.score - b.score) / a.score)))
    ta = pd.read_csv(local / "results/tiny/tables/synth.csv").set_index("Category")
    tb = pd.read_csv(remote / "results/tiny/tables/synth.csv").set_index("Category")
    assert ta.at["disc", "AUROC"] == tb.at["disc", "AUROC"]


def test_without_grouping_every_stage_is_its_own_job(tmp_path):
    """A dry run under the profile without its grouping: every stage is a job of its own, none in a group (the
    grouped profile really runs above; what an ungrouped job asks of sbatch is the same per rule)."""
    prof = ungrouped_profile(tmp_path)
    for profile, grouped in ((ROOT / "profiles" / "slurm", True), (prof, False)):
        r = snakemake(tmp_path, CFG, "-n", "--profile", str(profile))
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-5000:]
        assert ("Group job gpu_stages" in out) == grouped, out[-3000:]
    jobs = planned_jobs(out)
    assert {"features": 2, "pca": 1, "train": 1, "maps": 1, "metrics": 1, "plots": 1}.items() <= jobs.items()


@needs_slurm
def test_failing_job_fails_the_run_with_its_log(cluster, tmp_path):
    # a weights file that exists (so the plan hashes it) but is no state dict: the features job fails on it
    bad = tmp_path / "garbled.pth"
    bad.write_bytes(b"not a state dict" * 64)
    cfg = {**CFG, "features": {**CFG["features"], "weights": str(bad)}}
    r = snakemake(tmp_path, cfg, *SLURM_ARGS, "--retries", "0")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    # the group job's failure names its SLURM log and the log of each of its rules
    assert "Error in group gpu_stages" in out, out[-5000:]
    slurm_log = re.search(r"log: (\S+/slurm_logs/group_gpu_stages\S*\.log)", out)
    assert slurm_log and os.path.isfile(slurm_log.group(1)), out[-5000:]
    logs = re.findall(r"rule features:\s+jobid: \d+\s+output: \S+\s+log: (results/logs/features/\S+\.log)", out)
    assert logs, out[-5000:]
    # the group's first features job (train or test split) failed and named the file; the other never ran
    assert any("not a readable PyTorch state dict" in (tmp_path / log).read_text() for log in logs if (tmp_path / log).exists())
    # and the terminal ends with that job's own error line, its log named (profiles/default's onerror summary)
    tail = out[out.index("job(s) failed; each one's own error"):]
    assert re.search(r"- rule features \(log: results/logs/features/\S+\.log\)\n    dfr features: error: \S*garbled\.pth", tail), tail
