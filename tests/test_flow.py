"""The normalizing-flow head (FastFlow-style, beyond the paper): its likelihood, its training, its guards."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dfr.planning import config as dfr_config
from dfr.heads.flow import model as flow
from dfr import heads
from dfr.planning import keys
from dfr.stages.cache import FeatureCache
from dfr.io import DFRError
from test_cae import _cache

PARAMS = {"kind": "flow", "channels": 8, "blocks": 2, "hidden": 16, "kernel": 3, "clamp": 2.0, "epochs": 15,
          "batch_size": 4, "lr": 3e-3, "seed": 0}


def test_the_map_is_the_negative_log_likelihood_by_the_change_of_variables():
    """-log p(x) of one location, by the Jacobian's determinant (autograd, no triangular shortcut): the map plus
    the constant (C'/2) log 2π."""
    torch.manual_seed(0)
    model = flow.Flow(torch.arange(4), blocks=2, hidden=8, kernel=1, clamp=2.0)
    for p in model.parameters():  # away from the identity the flow starts at
        torch.nn.init.normal_(p, std=0.3)
    model.mean.normal_()
    model.std.uniform_(0.5, 2.0)
    f = torch.randn(1, 4, 1, 1, dtype=torch.float32)

    def z_of(v):  # the whole map R^4 -> R^4 at one location (kernel 1: locations are independent)
        x = (v.view(1, 4, 1, 1) - model.mean) / model.std
        for perm, block in zip(model.perms, model.blocks):
            x, _ = block(x.index_select(1, perm))
        return x.view(4)

    with torch.no_grad():
        jac = torch.autograd.functional.jacobian(z_of, f.view(4))
        z = z_of(f.view(4))
        got = float(model.anomaly_map(f)[0, 0, 0])
    want = 0.5 * float(z.pow(2).sum()) - math.log(abs(float(torch.linalg.det(jac.double()))))
    # the map leaves out the standardisation's log-determinant -Σ log σ, the same for every location and image
    assert got + float(torch.log(model.std).sum()) == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_training_lowers_the_nll_and_an_outlier_scores_high(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")  # 16 channels on a 3-dimensional subspace, 4x4 locations
    r = heads.fit(feats, split, tmp_path / "f.pt", tmp_path / "h.csv", PARAMS)
    h = pd.read_csv(tmp_path / "h.csv")
    assert len(h) == 15 and h.train_loss.iloc[-1] < h.train_loss.iloc[0] - 1  # it learnt the normal density
    assert np.isfinite(h.val_loss.iloc[-1]) and r["val"] == pytest.approx(h.val_loss.iloc[-1])
    model = heads.load(tmp_path / "f.pt")
    assert isinstance(model, flow.Flow) and len(model.channels) == 8
    with FeatureCache(feats) as c:
        val = torch.from_numpy(c.read(c.positions([f"train/good/{i:03d}" for i in range(20, 24)])))
    a = model.anomaly_map(val)
    odd = val.clone()
    odd[:, :, 1, 2] = 5 * torch.randn(4, 16)  # off the subspace the normal features lie on
    b = model.anomaly_map(odd)
    assert a.shape == (4, 4, 4) and (b[:, 1, 2] > a.amax(dim=(1, 2))).all()
    # the same seed gives the same model
    heads.fit(feats, split, tmp_path / "g.pt", tmp_path / "g.csv", PARAMS)
    torch.testing.assert_close(heads.load(tmp_path / "g.pt").anomaly_map(val), a)


def test_a_loss_that_is_not_finite_names_the_features(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    with pytest.raises(DFRError, match=r"train\.h5: the flow's loss is not finite in epoch 1 .*flow\.lr"):
        heads.fit(feats, split, tmp_path / "f.pt", tmp_path / "h.csv", {**PARAMS, "lr": float("inf")})
    with pytest.raises(DFRError, match="flow.channels is 40 but f\\(x\\) has 16 channels"):
        heads.fit(feats, split, tmp_path / "f.pt", tmp_path / "h.csv", {**PARAMS, "channels": 40})


def test_keys():
    base = dfr_config.validate({"datasets": {"s": {"kind": "synthetic", "categories": ["disc"]}}})
    m = dfr_config.validate({**base, "model": "flow"})
    assert keys.model_params(m) == {"kind": "flow", "channels": 128, "blocks": 4, "hidden": 128, "kernel": 3,
                                    "clamp": 2.0, "epochs": 20, "batch_size": 16, "lr": 0.001, "seed": 0,
                                    "code": keys.code_version("flow")}
    assert keys.model_key(m).startswith("flow-b4-e20-") and not keys.uses_pca(m)
    for k, v in (("channels", 64), ("blocks", 2), ("hidden", 32), ("kernel", 1), ("clamp", 1.0), ("epochs", 3),
                 ("batch_size", 4), ("lr", 0.01)):
        other = dfr_config.validate({**base, "model": "flow", "flow": {k: v}})
        assert keys.model_key(other) != keys.model_key(m), k
