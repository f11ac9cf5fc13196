import copy
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from dfr.planning import keys
from dfr import heads
from dfr.heads.cae import model as cae
from dfr.stages.cache import write_cache_meta
from dfr.io import DFRError


@pytest.mark.parametrize("c,d", [(1536, 100), (1536, 1), (152, 7), (10, 64)])
def test_shape_for_any_d(c, d):
    m = cae.CAE(c, d)
    convs = [l for l in [*m.encoder, *m.decoder] if isinstance(l, torch.nn.Conv2d)]
    mid = (c + 2 * d) // 2
    assert [(l.in_channels, l.out_channels) for l in convs] == [
        (c, mid), (mid, 2 * d), (2 * d, d), (d, 2 * d), (2 * d, mid), (mid, c)]
    assert all(l.kernel_size == (1, 1) for l in convs)
    assert not isinstance(m.encoder[-1], (torch.nn.ReLU, torch.nn.BatchNorm2d))  # linear latent code
    assert isinstance(m.decoder[-1], torch.nn.Conv2d)  # no output activation
    m.eval()
    assert m(torch.randn(2, c, 5, 5)).shape == (2, c, 5, 5)


def test_bad_latent_dim():
    with pytest.raises(DFRError):
        cae.CAE(10, 0)


def test_loss_is_eq1():
    f, g = torch.randn(3, 6, 4, 5), torch.randn(3, 6, 4, 5)
    per_image = ((f - g) ** 2).sum(1).sum((1, 2)) / 20
    assert torch.isclose(cae.reconstruction_loss(f, g), per_image.mean())
    torch.testing.assert_close(cae.error_map(f, g), ((f - g) ** 2).sum(1).sqrt())


def test_normalisation_is_undone_at_the_output():
    m = cae.CAE(4, 2, normalize=True).eval()
    m.mean.fill_(100.0)
    m.std.fill_(10.0)
    plain = cae.CAE(4, 2, normalize=False).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if k not in ("mean", "std")}, strict=False)
    f = torch.randn(1, 4, 3, 3) * 10 + 100
    torch.testing.assert_close(m(f), plain((f - 100) / 10) * 10 + 100)


def _cache(path, n=24, c=16, hw=4, seed=0):
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((3, c))
    x = (rng.standard_normal((n, hw * hw, 3)) @ basis).reshape(n, hw, hw, c).transpose(0, 3, 1, 2)
    ids = [f"train/good/{i:03d}" for i in range(n)]
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=x.astype(np.float16), chunks=(1, c, hw, hw))
        write_cache_meta(f, pd.DataFrame({"image_id": ids, "defect": "good", "path": "", "mask_path": "",
                                          "label": 0, "height": 32, "width": 32}), {})
    split = {"train": ids[:20], "val": ids[20:]}
    (path.parent / "split.json").write_text(json.dumps(split))
    return path, path.parent / "split.json"


def test_training_is_deterministic_and_keeps_best(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    params = {"latent_dim": 3, "normalize": True, "batchnorm": True, "epochs": 6, "batch_size": 8, "lr": 1e-2,
              "early_stopping": 0, "seed": 5, "device": "cpu"}
    r1 = cae.train(feats, split, tmp_path / "a.pt", tmp_path / "a.csv", params)
    r2 = cae.train(feats, split, tmp_path / "b.pt", tmp_path / "b.csv", {**params, "in_memory": False})
    h1, h2 = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    np.testing.assert_allclose(h1.train_loss, h2.train_loss, rtol=1e-6)
    assert r1["best_epoch"] == r2["best_epoch"] == int(h1.val_loss.idxmin()) + 1
    assert h1.train_loss.iloc[-1] < h1.train_loss.iloc[0]
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k])
    assert a["params"]["seed"] == 5 and "torch" in a["versions"]
    model = heads.load(tmp_path / "a.pt")
    assert model.latent_dim == 3 and not model.training


def test_early_stopping(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    params = {"latent_dim": 2, "normalize": False, "batchnorm": True, "epochs": 200, "batch_size": 8,
              "lr": 0.5, "early_stopping": 2, "seed": 0, "device": "cpu"}
    cae.train(feats, split, tmp_path / "m.pt", tmp_path / "h.csv", params)
    assert len(pd.read_csv(tmp_path / "h.csv")) < 200


def test_latent_auto_needs_pca(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    with pytest.raises(DFRError, match="no pca.json"):
        cae.train(feats, split, tmp_path / "m.pt", tmp_path / "h.csv",
                  {"latent_dim": "auto", "normalize": False, "epochs": 1, "batch_size": 4, "lr": 1e-3, "seed": 0})


# ---- beyond the paper: a spatial CAE (kernel 3, optionally depthwise) ----

@pytest.mark.parametrize("depthwise", [False, True])
def test_spatial_cae_shapes_and_receptive_field(depthwise):
    c, d = 12, 3
    m = cae.CAE(c, d, kernel=3, padding="reflect", depthwise=depthwise).eval()
    convs = [l for l in [*m.encoder, *m.decoder] if isinstance(l, torch.nn.Conv2d)]
    spatial = [l for l in convs if l.kernel_size == (3, 3)]
    assert len(spatial) == 6 and all(l.padding_mode == "reflect" and l.padding == (1, 1) for l in spatial)
    if depthwise:
        assert all(l.groups == l.in_channels == l.out_channels for l in spatial) and len(convs) == 12
    else:
        assert len(convs) == 6
    f = torch.randn(1, c, 9, 9)
    out = m(f)
    assert out.shape == f.shape
    # six 3x3 layers: a change at the centre reaches 6 locations away, and no further
    g = f.clone()
    g[0, :, 4, 4] += 5.0
    changed = (m(g) - out).abs().sum(1)[0] > 1e-6
    assert changed[4, 4] and changed[4, 0] and changed[0, 4]  # across the whole 9x9 map
    one = cae.CAE(c, d).eval()  # the paper's 1x1 CAE: the change stays where it is
    assert int(((one(g) - one(f)).abs().sum(1)[0] > 1e-6).sum()) == 1


def test_spatial_cae_normalisation_and_checkpoint(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    params = {"latent_dim": 3, "normalize": True, "batchnorm": True, "epochs": 3, "batch_size": 8, "lr": 1e-2,
              "early_stopping": 0, "seed": 1, "device": "cpu", "kernel": 3, "padding": "zeros",
              "depthwise": True}
    cae.train(feats, split, tmp_path / "s.pt", tmp_path / "s.csv", params)
    h = pd.read_csv(tmp_path / "s.csv")
    assert h.train_loss.iloc[-1] < h.train_loss.iloc[0]
    m = heads.load(tmp_path / "s.pt")
    assert (m.kernel, m.padding, m.depthwise) == (3, "zeros", True)
    # the 1x1 CAE of an older checkpoint (no kernel recorded) still loads as the paper's CAE
    ck = torch.load(tmp_path / "s.pt", weights_only=True)
    plain = cae.CAE(16, 3, normalize=True)
    old = {**{k: v for k, v in ck.items() if k not in ("kernel", "padding", "depthwise")},
           "state_dict": plain.state_dict()}
    assert cae.from_checkpoint(old).kernel == 1
    with pytest.raises(DFRError, match="odd"):
        cae.CAE(4, 2, kernel=2)


def test_spatial_options_key_the_model_only_when_used():
    from dfr.planning import config as dfr_config

    base = dfr_config.validate({"datasets": {"s": {"kind": "synthetic", "categories": ["disc"]}}})
    # the 1x1 CAE has no spatial padding and no depthwise conv: they do not key it
    assert "padding" not in keys.model_params(base) and "depthwise" not in keys.model_params(base)
    same = dfr_config.validate({**base, "cae": {**base["cae"], "padding": "zeros", "depthwise": True}})
    assert keys.model_key(same) == keys.model_key(base)
    spatial = dfr_config.validate({**base, "cae": {**base["cae"], "kernel": 3}})
    assert keys.model_params(spatial)["padding"] == "reflect"
    assert keys.model_key(spatial) != keys.model_key(base)
    assert keys.feature_key(spatial) == keys.feature_key(base)
    with pytest.raises(DFRError, match="cae.kernel: 5 is not one of"):
        dfr_config.validate({**base, "cae": {**base["cae"], "kernel": 5}})
    with pytest.raises(DFRError, match="cae.padding: 'circular' is not one of"):
        dfr_config.validate({**base, "cae": {**base["cae"], "padding": "circular"}})


def _stop_epoch(history: pd.DataFrame, patience: int) -> int:
    """Where early stopping must stop: the first epoch that is ``patience`` epochs after the best so far."""
    best, best_epoch = float("inf"), 0
    for _, r in history.iterrows():
        if r.val_loss < best:
            best, best_epoch = r.val_loss, int(r.epoch)
        elif int(r.epoch) - best_epoch >= patience:
            return int(r.epoch)
    return int(history.epoch.iloc[-1])


@pytest.mark.parametrize("patience", [2, 3])
def test_early_stopping_stops_at_best_plus_patience_and_keeps_the_best_weights(tmp_path, patience):
    """With checkpoint: best_val, training stops exactly `patience` epochs after the best epoch and the saved
    weights are the best epoch's: their validation loss recomputed is the history's least. (A rule that stopped
    one epoch early or late, or kept the last weights, fails: the patience 2 and 3 runs stop at different epochs
    on the same curve, and the last epoch's loss differs from the best's.)"""
    feats, split = _cache(tmp_path / "train.h5")
    params = {"latent_dim": 2, "normalize": False, "batchnorm": True, "epochs": 200, "batch_size": 8,
              "lr": 0.5, "early_stopping": patience, "checkpoint": "best_val", "seed": 0, "device": "cpu"}
    r = cae.train(feats, split, tmp_path / "m.pt", tmp_path / "h.csv", params)
    h = pd.read_csv(tmp_path / "h.csv")
    assert len(h) < 200
    assert int(h.epoch.iloc[-1]) == r["best_epoch"] + patience == _stop_epoch(h, patience)
    assert r["best_epoch"] == int(h.epoch[h.val_loss.idxmin()]) and r["epoch"] == r["best_epoch"]
    model = heads.load(tmp_path / "m.pt")
    from dfr.stages.cache import FeatureCache

    with FeatureCache(feats) as c:
        f = torch.from_numpy(c.read(c.positions(json.loads(split.read_text())["val"]))).float()
    with torch.no_grad():
        val = float(cae.reconstruction_loss(f, model(f)))
    assert val == pytest.approx(h.val_loss.min(), rel=1e-4)
    assert h.val_loss.iloc[-1] != pytest.approx(h.val_loss.min(), rel=1e-4)  # the last weights are not the best


@pytest.mark.parametrize("normalize", [False, True])
def test_the_fused_forward_is_its_own_conv_and_batchnorm_modules(normalize):
    """The 1x1 CAE's forward runs its layers as matrix products; run as the nn.Conv2d / nn.BatchNorm2d / ReLU
    modules it holds, in train mode (batch statistics, running statistics updated) and in eval mode, it gives
    the same f̂(x) and the same running statistics. A fusion that dropped the normalisation or a BatchNorm's
    running-statistics update would fail."""
    torch.manual_seed(0)
    m = cae.CAE(12, 3, normalize=normalize)
    if normalize:
        m.mean.copy_(torch.randn(1, 12, 1, 1))
        m.std.copy_(torch.rand(1, 12, 1, 1) + 0.5)
    ref = copy.deepcopy(m)

    def modules(f):
        x = (f - ref.mean) / ref.std if normalize else f
        for layer in (*ref.encoder, *ref.decoder):
            x = layer(x)
        return x * ref.std + ref.mean if normalize else x

    f = torch.randn(4, 12, 5, 5)
    for train in (True, False):
        m.train(train), ref.train(train)
        torch.testing.assert_close(m(f), modules(f), rtol=1e-5, atol=1e-5)
        for a, b in zip(m.state_dict().values(), ref.state_dict().values()):
            torch.testing.assert_close(a, b)
    # the check sees a wrong fusion: without the output's inverse normalisation the results differ
    if normalize:
        assert not torch.allclose(m(f), (modules(f) - ref.mean) / ref.std, atol=1e-3)
