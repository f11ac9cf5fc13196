"""The per-location Gaussian reference model (PaDiM-style) on cached features (beyond the paper)."""

import numpy as np
import pandas as pd
import pytest
import torch

from dfr.planning import keys
from dfr.heads.gaussian import model as gaussian
from dfr import heads
from dfr.planning import config as dfr_config
from dfr.stages.cache import FeatureCache
from dfr.io import DFRError
from test_cae import _cache

PARAMS = {"kind": "gaussian", "channels": None, "shrinkage": 0.01, "seed": 0}


def test_fit_gives_per_location_mean_and_mahalanobis_distance(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    r = gaussian.fit(feats, split, tmp_path / "g.pt", tmp_path / "h.csv", PARAMS)
    assert r["channels"] == 16 and r["val"] > 0
    model = heads.load(tmp_path / "g.pt")  # the pipeline's loader knows the kind
    assert isinstance(model, gaussian.Gaussian)
    with FeatureCache(feats) as c:
        x_tr = c.read(c.positions([f"train/good/{i:03d}" for i in range(20)]))
        x_va = c.read(c.positions([f"train/good/{i:03d}" for i in range(20, 24)]))
    # location (1, 2), directly: mean, covariance + eps I, Mahalanobis distance of a validation image
    v = x_tr[:, :, 1, 2].astype(np.float64)
    mu, cov = v.mean(0), np.cov(v, rowvar=False) + 0.01 * np.eye(16)
    np.testing.assert_allclose(model.mean[1 * 4 + 2].numpy(), mu, rtol=1e-5, atol=1e-6)
    d = x_va[0, :, 1, 2] - mu
    want = np.sqrt(d @ np.linalg.inv(cov) @ d)
    a = model.anomaly_map(torch.from_numpy(x_va[:1]))
    assert a.shape == (1, 4, 4)
    np.testing.assert_allclose(float(a[0, 1, 2]), want, rtol=1e-3)
    h = pd.read_csv(tmp_path / "h.csv")
    assert list(h.columns[:3]) == ["epoch", "train_loss", "val_loss"] and len(h) == 1


def test_channel_subset_is_seeded_and_checked(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    gaussian.fit(feats, split, tmp_path / "a.pt", tmp_path / "a.csv", {**PARAMS, "channels": 5})
    gaussian.fit(feats, split, tmp_path / "b.pt", tmp_path / "b.csv", {**PARAMS, "channels": 5})
    a, b = heads.load(tmp_path / "a.pt"), heads.load(tmp_path / "b.pt")
    assert a.channels.tolist() == b.channels.tolist() and len(a.channels) == 5
    assert a.precision.shape == (16, 5, 5)
    with pytest.raises(DFRError, match="gaussian.channels is 40 but f\\(x\\) has 16 channels"):
        gaussian.fit(feats, split, tmp_path / "c.pt", tmp_path / "c.csv", {**PARAMS, "channels": 40})
    with pytest.raises(DFRError, match="fitted on a grid of 16 locations, got 5x5"):
        a.anomaly_map(torch.zeros(1, 16, 5, 5))


def test_config_keys_and_validation():
    base = dfr_config.validate({"datasets": {"s": {"kind": "synthetic", "categories": ["disc"]}}})
    g = dfr_config.validate({**base, "model": "gaussian", "gaussian": {"channels": 100}})
    assert keys.uses_pca(base) and not keys.uses_pca(g)
    assert keys.model_params(g) == {"kind": "gaussian", "channels": 100, "shrinkage": 0.01, "seed": 0,
                                    "code": keys.code_version("gaussian")}
    assert keys.model_key(g).startswith("gauss-c100-")
    assert keys.feature_key(g) == keys.feature_key(base)  # the same cached features
    assert "kind" not in keys.model_params(base)
    with pytest.raises(DFRError, match="model: 'padim' is not one of"):
        dfr_config.validate({**base, "model": "padim"})
    with pytest.raises(DFRError, match="gaussian.channels: 0 is less than the minimum of 1"):
        dfr_config.validate({**base, "gaussian": {"channels": 0}})


FIT_SCRIPT = r"""
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from dfr.heads.gaussian import model as gaussian
from dfr import measure
base = measure.rss_mb()
exact = measure.reset_peak()
r = gaussian.fit(sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6],
                 {"kind": "gaussian", "channels": None, "shrinkage": 0.01, "seed": 0})
print(json.dumps({"peak_above_baseline_mb": measure.peak_rss_mb() - base, "exact": exact}))
"""


@pytest.mark.extended
def test_fit_memory_is_the_sums_plus_the_float32_precisions(tmp_path):
    """28x28 locations x 384 channels: Σ x xᵀ in float64 (925 MB) and the float32 precisions (462 MB) are held,
    the covariances are formed in place and inverted in chunks (three float64 copies would be 3.2 GB)."""
    import json
    import subprocess
    import sys

    from conftest import ROOT
    from dfr.planning import resources

    hw, k = 28, 384
    feats, split = _cache(tmp_path / "train.h5", n=24, c=k, hw=hw)
    r = subprocess.run([sys.executable, "-c", FIT_SCRIPT, str(ROOT / "workflow"), str(ROOT / "tests"), str(feats),
                        str(split), str(tmp_path / "g.pt"), str(tmp_path / "h.csv")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    held_mb = hw * hw * k * k * (8 + 4) / 2**20
    print(f"peak above baseline {out['peak_above_baseline_mb']:.0f} MB; sums + precisions {held_mb:.0f} MB")
    assert out["peak_above_baseline_mb"] < held_mb + 256 + 200
    cfg = dfr_config.validate({"datasets": {"s": {"kind": "synthetic", "categories": ["disc"]}},
                               "model": "gaussian", "data": {"image_size": 224}, "features": {"grid": hw}})
    cfg["gaussian"]["channels"] = k
    est = resources.estimate(cfg, "train", "s", "disc")["mem_mb"]
    assert est > held_mb + 256 and est < 2 * (held_mb + 1200)  # declared from the same model, with headroom
    # the chunked in-place inversion gives the direct inverse (location 100)
    model = heads.load(tmp_path / "g.pt")
    with FeatureCache(feats) as c:
        v = c.read(c.positions([f"train/good/{i:03d}" for i in range(20)]))[:, :, 100 // hw, 100 % hw]
    cov = np.cov(v.astype(np.float64), rowvar=False) + 0.01 * np.eye(k)
    np.testing.assert_allclose(model.precision[100].numpy(), np.linalg.inv(cov), rtol=2e-3, atol=2e-3)


def test_shared_covariance_pools_the_within_location_scatter(tmp_path):
    """covariance: shared: means per location, one covariance pooled over locations (against numpy), keyed apart
    from the per-location model; the per-location model's params, and so its key, are as before."""
    feats, split = _cache(tmp_path / "train.h5")
    gaussian.fit(feats, split, tmp_path / "s.pt", tmp_path / "s.csv", {**PARAMS, "covariance": "shared"})
    model = heads.load(tmp_path / "s.pt")
    assert model.precision.shape == (1, 16, 16)
    with FeatureCache(feats) as c:
        x_tr = c.read(c.positions([f"train/good/{i:03d}" for i in range(20)])).astype(np.float64)
        x_va = c.read(c.positions([f"train/good/{i:03d}" for i in range(20, 24)]))
    n, ch, h, w = x_tr.shape
    v = x_tr.reshape(n, ch, h * w).transpose(2, 0, 1)  # [HW, n, C]
    centred = v - v.mean(1, keepdims=True)
    cov = np.einsum("lnc,lnd->cd", centred, centred) / (h * w * (n - 1)) + 0.01 * np.eye(ch)
    prec = np.linalg.inv(cov)
    d = x_va[:, :, :, :].reshape(len(x_va), ch, h * w).transpose(2, 0, 1) - v.mean(1, keepdims=True)  # [HW, N, C]
    want = np.sqrt(np.einsum("lnc,cd,lnd->nl", d, prec, d)).reshape(len(x_va), h, w)
    np.testing.assert_allclose(model.anomaly_map(torch.from_numpy(x_va)).numpy(), want, rtol=1e-3)
    base = dfr_config.validate({"datasets": {"s": {"kind": "synthetic", "categories": ["disc"]}}, "model": "gaussian"})
    shared = dfr_config.validate({**base, "gaussian": {"covariance": "shared"}})
    assert "covariance" not in keys.model_params(base)
    assert keys.model_params(shared)["covariance"] == "shared" and keys.model_key(shared) != keys.model_key(base)
