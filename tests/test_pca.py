import numpy as np
import pytest

from dfr import pca
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
