"""The memory-bank head (PatchCore-style, beyond the paper), against brute force on small arrays."""

import math

import numpy as np
import pytest
import torch

from dfr.planning import config as dfr_config
from dfr import heads
from dfr.planning import keys, workload
from dfr.heads import memory_bank as memory_bank_head
from dfr.heads.memory_bank import model as memory_bank
from dfr.stages.cache import FeatureCache
from dfr.io import DFRError
from test_cae import _cache

PARAMS = {"kind": "memory_bank", "coreset": 0.25, "projection": 8, "sigma": 0.0, "seed": 0}


def _brute_greedy(z, m, start):
    """k-center greedy, written plainly: each step the row whose nearest chosen row is farthest."""
    chosen = [start]
    for _ in range(m - 1):
        d = np.min(((z[:, None, :] - z[chosen][None]) ** 2).sum(-1), axis=1)
        chosen.append(int(np.argmax(d)))
    return chosen


def test_greedy_coreset_is_k_center_greedy():
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((300, 5))).float()
    got = memory_bank.greedy_coreset(z, 20, 7).tolist()
    assert got == _brute_greedy(z.double().numpy(), 20, 7)
    assert len(set(got)) == 20  # no patch twice


def test_fit_keeps_a_coreset_and_a_x_is_the_distance_to_the_nearest_patch(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")  # 20 training images of 4x4 locations, 16 channels
    r = heads.fit(feats, split, tmp_path / "m.pt", tmp_path / "h.csv", PARAMS)
    assert r["patches"] == 20 * 16 and r["bank"] == math.ceil(0.25 * 320) == 80
    model = heads.load(tmp_path / "m.pt")  # the pipeline's loader knows the kind
    assert isinstance(model, memory_bank.MemoryBank) and model.bank.shape == (80, 16)
    with FeatureCache(feats) as c:
        train = c.read(c.positions([f"train/good/{i:03d}" for i in range(20)]))
        val = c.read(c.positions([f"train/good/{i:03d}" for i in range(20, 24)]))
    patches = train.transpose(0, 2, 3, 1).reshape(-1, 16).astype(np.float64)
    # the bank is a subset of the training patches, and the one the greedy coreset picks on the projection
    proj = memory_bank.projection_matrix(16, 8, 0).double().numpy()
    start = int(np.random.default_rng(0).integers(320))
    want = sorted(_brute_greedy(patches @ proj, 80, start))
    np.testing.assert_allclose(model.bank.numpy(), patches[want], rtol=0, atol=0)
    # A(x): each location's Euclidean distance to its nearest bank patch, in the full space
    q = val.transpose(0, 2, 3, 1).reshape(-1, 16).astype(np.float64)
    d = np.sqrt(((q[:, None, :] - patches[want][None]) ** 2).sum(-1).min(1)).reshape(4, 4, 4)
    a = model.anomaly_map(torch.from_numpy(val))
    np.testing.assert_allclose(a.numpy(), d, rtol=1e-4, atol=1e-4)
    # chunked as the maps stage runs it (rows at a time) or in one product (a traced graph): the same map, to
    # float32's rounding of ||x||² - 2 x·m + ||m||² in products of other shapes
    model.rows = 5
    np.testing.assert_allclose(model.anomaly_map(torch.from_numpy(val)).numpy(), a.numpy(), rtol=1e-5)
    # a training patch that is in the bank is at distance 0 from it
    assert float(model.anomaly_map(torch.from_numpy(train[want[0] // 16:want[0] // 16 + 1])).min()) < 1e-3


def test_smoothing_and_a_bank_of_every_patch(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    heads.fit(feats, split, tmp_path / "all.pt", tmp_path / "h.csv", {**PARAMS, "coreset": 1.0})
    heads.fit(feats, split, tmp_path / "s.pt", tmp_path / "h2.csv", {**PARAMS, "coreset": 1.0, "sigma": 1.0})
    full, smooth = heads.load(tmp_path / "all.pt"), heads.load(tmp_path / "s.pt")
    assert full.bank.shape == (320, 16)
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 16, 4, 4)).astype(np.float32))
    a = full.anomaly_map(x)
    k = memory_bank.gaussian_kernel(1.0)[0, 0].double().numpy()  # 7x7, sums to 1
    assert k.shape == (7, 7) and abs(k.sum() - 1) < 1e-6
    padded = np.pad(a.double().numpy(), [(0, 0), (3, 3), (3, 3)], mode="edge")
    want = np.stack([[[(padded[n, i:i + 7, j:j + 7] * k).sum() for j in range(4)] for i in range(4)]
                     for n in range(2)])
    np.testing.assert_allclose(smooth.anomaly_map(x).double().numpy(), want, rtol=1e-5)


def test_a_checkpoint_of_another_width_is_named(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    heads.fit(feats, split, tmp_path / "m.pt", tmp_path / "h.csv", PARAMS)
    with pytest.raises(DFRError, match="memory bank of 16-channel patches, got f\\(x\\) of 8 channels"):
        heads.load(tmp_path / "m.pt").anomaly_map(torch.zeros(1, 8, 4, 4))


def test_keys_and_resources():
    base = dfr_config.validate({"datasets": {"s": {"kind": "synthetic", "categories": ["disc"]}}})
    m = dfr_config.validate({**base, "model": "memory_bank", "memory_bank": {"coreset": 0.1}})
    assert keys.model_params(m) == {"kind": "memory_bank", "coreset": 0.1, "projection": 128, "sigma": 0.5,
                                    "seed": 0, "code": keys.code_version("memory_bank")}
    assert keys.model_key(m).startswith("mb0.1-") and not keys.uses_pca(m)
    assert keys.feature_key(m) == keys.feature_key(base)  # the same cached features
    # each setting of the head is in its key
    for k, v in (("coreset", 0.2), ("projection", 64), ("sigma", 0.0)):
        other = dfr_config.validate({**base, "model": "memory_bank", "memory_bank": {"coreset": 0.1, k: v}})
        assert keys.model_key(other) != keys.model_key(m), k
    # MVTec AD's largest category (hazelnut: 391 training images, less the held-out, 28² at 224²): 1 % kept
    one = m | {"memory_bank": {**m["memory_bank"], "coreset": 0.01}}
    n_fit = 391 - workload.held_out(one, workload.from_shape(391, 0, 224, 224))
    patches, kept = memory_bank_head.HEAD.bank_size(one, 784, n_fit)
    assert patches == round(391 * (1 - m["data"]["val_fraction"])) * 784 and kept == math.ceil(0.01 * patches)

