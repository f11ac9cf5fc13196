import json

import numpy as np
import pytest

from dfr.stages import pca
from dfr.io import DFRError


def _data(variances, n=4000, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    z = rng.standard_normal((n, len(variances))) * np.sqrt(variances)
    z -= z.mean(0)
    z /= z.std(0) / np.sqrt(variances)
    return z @ q[: len(variances)] + 5.0


@pytest.mark.parametrize("rank", [1, 7, 20])
def test_known_rank_equal_variances(rank):
    d, cum = pca.select_latent_dim(_data([1.0] * rank), 0.95)
    assert d == int(np.ceil(0.95 * rank - 1e-9))
    assert cum[rank - 1] == pytest.approx(1.0)


def test_known_spectrum():
    # variances 50, 30, 15, 4, 1 -> cumulative .5, .8, .95, .99, 1.0
    x = _data([50.0, 30.0, 15.0, 4.0, 1.0])
    assert pca.select_latent_dim(x, 0.95)[0] == 3
    assert pca.select_latent_dim(x, 0.96)[0] == 4
    assert pca.select_latent_dim(x, 0.5)[0] == 1


def test_bad_variance():
    with pytest.raises(DFRError, match="pca.variance"):
        pca.select_latent_dim(np.zeros((10, 3)), 1.5)


def test_subsampling_takes_a_seeded_share_of_each_images_locations(tmp_path):
    """Above pca.max_samples, each training image gives ceil(max_samples / n) of its locations, drawn by the
    seed: the same seed the same vectors, another seed others, and d is PCA's on exactly those vectors (a sampler
    that ignored the seed, or took the first locations, fails)."""
    import math

    from dfr.stages.cache import FeatureCache
    from test_cae import _cache

    feats, split = _cache(tmp_path / "train.h5", n=24, c=16, hw=4)  # 20 training images x 16 locations
    ids = json.loads(split.read_text())["train"]
    with FeatureCache(feats) as c:
        a = pca.location_vectors(c, ids, 100, seed=1)
        b = pca.location_vectors(c, ids, 100, seed=1)
        other = pca.location_vectors(c, ids, 100, seed=2)
        full = pca.location_vectors(c, ids, 10**9, seed=1)
    assert a.shape == (20 * math.ceil(100 / 20), 16) and full.shape == (20 * 16, 16)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, other)
    first = full.reshape(20, 16, 16)[:, :5].reshape(-1, 16)
    assert not np.array_equal(a, first)  # not simply each image's first locations
    rows = {r.tobytes() for r in full}
    assert all(r.tobytes() in rows for r in a)  # every sampled vector is one of the image's own locations
    r = pca.run(feats, split, tmp_path / "pca.json", {"variance": 0.95, "max_samples": 100, "seed": 1})
    d, cum = pca.select_latent_dim(a.astype(np.float64), 0.95)
    assert r["n_samples"] == len(a) and r["latent_dim"] == d


def test_the_pca_stage_reads_the_feature_cache_without_torch(tmp_path):
    """A PCA job reads f(x) through dfr.stages.cache and loads no torch (its import is most of a small job's time)."""
    import subprocess
    import sys

    from test_cae import _cache

    feats, split = _cache(tmp_path / "train.h5", n=12, c=8, hw=4)
    code = ("import sys, json; from dfr.stages import pca; "
            f"pca.run({str(feats)!r}, {str(split)!r}, {str(tmp_path / 'pca.json')!r}, "
            "{'variance': 0.95, 'max_samples': 100, 'seed': 0}); "
            "print(json.dumps(sorted(k for k in ('torch', 'torchvision', 'timm') if k in sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [] and (tmp_path / "pca.json").is_file()
