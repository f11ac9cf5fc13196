import numpy as np
import pytest

from dfr import scoring
from dfr.io import DFRError


def test_top_k_mean():
    a = np.zeros((2, 4, 4), np.float32)
    a[0].flat[:5] = [5, 4, 3, 2, 1]
    a[1] = 7
    np.testing.assert_allclose(scoring.top_k_score(a, 1), [5, 7])
    np.testing.assert_allclose(scoring.top_k_score(a, 3), [4, 7])
    np.testing.assert_allclose(scoring.top_k_score(a, 16), [15 / 16, 7])
    np.testing.assert_allclose(scoring.top_k_score(a[0], 2), [4.5])


@pytest.mark.parametrize("k", [0, 17])
def test_top_k_bounds(k):
    with pytest.raises(DFRError, match="top_k"):
        scoring.top_k_score(np.zeros((1, 4, 4)), k)


def test_upsample_bilinear_to_original_size():
    a = np.arange(4, dtype=np.float32).reshape(2, 2)
    up = scoring.upsample(a, (6, 9))
    assert up.shape == (6, 9)
    assert up.min() >= 0 and up.max() <= 3
    np.testing.assert_allclose(scoring.upsample(np.full((28, 28), 2.5), (100, 80)), 2.5)
    assert scoring.upsample(np.zeros((3, 28, 28)), (50, 50)).shape == (3, 50, 50)
