"""Real MVTec AD data (bottle, downscaled) with ImageNet EfficientNet-Lite0 features, through Snakemake."""

import json

import pytest
import yaml

from conftest import BOTTLE, ROOT
from test_workflow import snakemake

pytestmark = [pytest.mark.slow, pytest.mark.extended]


@pytest.mark.skipif(not (BOTTLE / "bottle").is_dir(), reason=f"{BOTTLE} not present")
def test_bottle_auroc_is_high(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "bottle.yaml").read_text())
    cfg["datasets"]["mvtec_bottle"]["root"] = str(BOTTLE)
    cfg["device"] = "cpu"
    r = snakemake(tmp_path, cfg)
    assert r.returncode == 0, r.stderr[-4000:]
    m = json.loads((tmp_path / "results" / "bottle" / "mvtec_bottle" / "bottle" / "metrics.json").read_text())
    assert m["n_test"] == 83 and m["n_test_anomalous"] == 63
    print("bottle:", m["image_auroc"], m["pixel"]["auroc"], m["pixel"]["au_pro"])
    assert m["image_auroc"] > 0.95
    assert m["pixel"]["auroc"] > 0.9
