"""The benchmark DAG on MVTec-AD-shaped categories at real image size (scale 0.03), through
``python -m dfr.tools.rehearsal --run``: every stage runs, every job's measured peak RSS stays below the mem_mb its
rule declared (with the memory floor lowered, so the estimates themselves are tested), and the report and
projections are printed. What it checks holds per job, so three categories that span the extremes stand for
the fifteen: the largest masks, a grey-scale one and the smallest images."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from dfr import shapes

pytestmark = [pytest.mark.slow, pytest.mark.extended]


def extremes() -> list[str]:
    mvtec = shapes.MVTEC_AD
    largest = max(mvtec, key=lambda c: mvtec[c].n_test_anomalous * mvtec[c].width * mvtec[c].height)
    grey = next(c for c in mvtec if mvtec[c].grey and c != largest)
    small = min(mvtec, key=lambda c: mvtec[c].width * mvtec[c].height)
    return [largest, grey, small]


def test_scaled_rehearsal_runs_within_its_declared_memory(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "rehearsal.yaml").read_text())
    cats = extremes()
    assert len(set(cats)) == 3
    cfg["datasets"]["mvtec_shaped"]["categories"] = cats
    cfg["datasets"]["mvtec_shaped"]["synthetic"]["scale"] = 0.03
    cfg["cae"]["epochs"] = 1  # what is measured is memory per job: one epoch holds what three do
    cfg.setdefault("data", {})["val_fraction"] = 0.4  # at 3 % of the counts, 0.15 would hold out one normal: too few for a sigma
    cfg["resources"] = {"mem_mb_min": 500}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "dfr.tools.rehearsal", "--configfile", "config.yaml", "--run", "--cores",
                        "2", "--json", "rehearsal.json"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=1800, env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "workflow")})
    report = r.stdout[r.stdout.find("| stage |"):]
    print(report)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    out = json.loads((tmp_path / "rehearsal.json").read_text())
    stages = {s["stage"]: s for s in out["stages"]}
    assert set(stages) == {"synthetic", "index", "features", "split", "pca", "train", "maps", "scores", "metrics", "bundle",
                           "plots", "tables"}
    assert stages["features"]["jobs"] == 6 and stages["metrics"]["jobs"] == 3
    for job in out["jobs"]:
        assert 0 < job["peak_mb"] < job["declared_mb"], job
    p = out["projection"]
    assert p["real"]["categories"] == 27 and p["real"]["n_train"] == 3629 + 8659
    assert "every job's peak RSS is below its declared mem_mb" in report
