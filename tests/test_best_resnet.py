"""config/best-resnet.yaml: the recipe of config/best.yaml on torchvision's ResNets (weights not downloadable here,
so its gains are unmeasured): the offline study's variant moved to WR50, sized for the real benchmark, and run end
to end with random weights at a reduced size."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT
from dfr.planning import keys, plan
from dfr.planning import config as dfr_config
from dfr.planning import resources

RESNET = ROOT / "config" / "best-resnet.yaml"


def _load():
    return dfr_config.load(RESNET)


def test_it_is_the_offline_variant_on_wr50():
    cfg = _load()
    offline = plan.variants(dfr_config.load(ROOT / "config" / "study-select.yaml"))["study-select/best-ens"]
    assert cfg["ensemble"]["members"] == offline["ensemble"]["members"]
    assert cfg["scoring"] == offline["scoring"] and cfg["thresholds"] == offline["thresholds"]
    for k in ("image_size", "val_fraction"):
        assert cfg["data"][k] == offline["data"][k]
    assert cfg["cae"]["epochs"] == offline["cae"]["epochs"]
    assert cfg["features"]["backbone"] == "wide_resnet50_2"
    assert cfg["features"]["layers"] == ["layer2[-1]", "layer3[-1]"]  # the paper's hooks
    assert set(cfg["datasets"]) == {"mvtec_ad", "visa"}
    ms = plan.members(cfg)
    assert [m.get("model") for m in ms] == ["cae", "gaussian"]
    assert [m["data"]["image_size"] for m in ms] == [448, 448]
    assert ms[1]["gaussian"]["channels"] == 550  # < the 1536 fused channels
    assert keys.feature_key(ms[0]) == keys.feature_key(ms[1])  # one backbone pass
    # best.yaml's members, less the EfficientNet-Lite1/Lite2 ones (no ResNet of their kind)
    best = dfr_config.load(ROOT / "config" / "best.yaml")["ensemble"]["members"]
    assert cfg["ensemble"]["members"] == [m for m in best if "features.backbone" not in m]


@pytest.mark.parametrize("dataset,category", [("mvtec_ad", "hazelnut"), ("visa", "pcb1")])
def test_every_job_is_sized_for_a_gpu_node(dataset, category):
    """The largest categories' jobs ask for at most 32 GB; the 448² Gaussian's declaration covers its float64 sums
    and float32 precisions (3136 locations x 550²)."""
    cfg = _load()
    ms = plan.members(cfg)
    for m in ms:
        for rule in ("features", "pca", "train", "maps"):
            r = resources.estimate(m, rule, dataset, category, "train" if rule == "features" else None)
            assert 0 < r["mem_mb"] <= 32_000, (rule, m.get("model"), r)
    held = 56 * 56 * 550 * 550 * (8 + 4) / 2**20
    assert resources.estimate(ms[1], "train", dataset, category)["mem_mb"] > held
    for rule in ("ensemble", "scores", "metrics"):
        assert resources.estimate(cfg, rule, dataset, category)["mem_mb"] <= 32_000


@pytest.mark.extended
@pytest.mark.slow
def test_runs_end_to_end_with_random_weights(tmp_path, monkeypatch):
    """The config itself, its side quartered (448 -> 112) and a tiny synthetic category instead of
    the benchmarks; random WR50 weights (the ImageNet ones cannot be downloaded here)."""
    raw = copy.deepcopy(_load())
    raw["results"] = str(tmp_path / "results")
    raw["device"] = "cpu"
    raw["datasets"] = {"synth": {"kind": "synthetic", "categories": ["disc"],
                                 "synthetic": {"n_train": 28, "n_test_good": 3, "n_test_defect": 3}}}
    raw["data"]["image_size"] = 112
    raw["features"].update(weights="none", num_workers=0)
    raw["cae"]["epochs"] = 2
    raw["gaussian"]["channels"] = 64  # 24 training images: 550 channels would be all shrinkage
    # 28 x 0.15: 4 held-out normals, the fewest an ensemble takes (2 normalise, 2 set the thresholds)
    cfg = dfr_config.validate(raw, str(RESNET))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    r = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(ROOT / "Snakefile"),
                        "--directory", str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "2"],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    monkeypatch.chdir(tmp_path)
    p = plan.paths(cfg, "synth", "disc")
    m = json.loads(Path(p["metrics"]).read_text())
    s = pd.read_csv(p["scores"])
    assert len(s) > 6 and np.isfinite(s.score).all()
    assert m["n_test"] == int((s.split == "test").sum()) and np.isfinite(m["image_auroc"])
    assert m["pixel"]["applicable"] and np.isfinite(m["pixel"]["au_pro"]) and m["pixel"]["n_regions"] > 0
    grids = []
    for mcfg in plan.members(cfg):
        with h5py.File(plan.paths(mcfg, "synth", "disc")["maps"], "r") as f:
            grids.append(f["A"].shape[1:])
    assert grids == [(14, 14), (14, 14)]
    with h5py.File(p["maps"], "r") as f:
        assert f["A"].shape[1:] == (14, 14)  # fused on the members' grid
