"""The per-location Gaussian reference model (PaDiM-style) on cached features (beyond the paper)."""

import numpy as np
import pandas as pd
import pytest
import torch

from dfr import cae, gaussian
from dfr import config as dfr_config
from dfr.features import FeatureCache
from dfr.io import DFRError
from test_cae import _cache

PARAMS = {"kind": "gaussian", "channels": None, "shrinkage": 0.01, "seed": 0}


def test_fit_gives_per_location_mean_and_mahalanobis_distance(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    r = gaussian.fit(feats, split, tmp_path / "g.pt", tmp_path / "h.csv", PARAMS)
    assert r["channels"] == 16 and r["val"] > 0
    model = cae.load(tmp_path / "g.pt")  # the pipeline's loader knows the kind
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
    a, b = cae.load(tmp_path / "a.pt"), cae.load(tmp_path / "b.pt")
    assert a.channels.tolist() == b.channels.tolist() and len(a.channels) == 5
    assert a.precision.shape == (16, 5, 5)
    with pytest.raises(DFRError, match="gaussian.channels is 40 but f\\(x\\) has 16 channels"):
        gaussian.fit(feats, split, tmp_path / "c.pt", tmp_path / "c.csv", {**PARAMS, "channels": 40})
    with pytest.raises(DFRError, match="fitted on a grid of 16 locations, got 5x5"):
        a.anomaly_map(torch.zeros(1, 16, 5, 5))


def test_config_keys_and_validation():
    base = dfr_config.validate({"datasets": {"s": {"kind": "synthetic", "categories": ["disc"]}}})
    g = dfr_config.validate({**base, "model": "gaussian", "gaussian": {"channels": 100}})
    assert dfr_config.uses_pca(base) and not dfr_config.uses_pca(g)
    assert dfr_config.cae_params(g) == {"kind": "gaussian", "channels": 100, "shrinkage": 0.01, "seed": 0}
    assert dfr_config.model_key(g).startswith("gauss-c100-")
    assert dfr_config.feature_key(g) == dfr_config.feature_key(base)  # the same cached features
    assert "kind" not in dfr_config.cae_params(base)
    with pytest.raises(DFRError, match="model: 'padim' is not one of"):
        dfr_config.validate({**base, "model": "padim"})
    with pytest.raises(DFRError, match="gaussian.channels: 0 is less than the minimum of 1"):
        dfr_config.validate({**base, "gaussian": {"channels": 0}})
