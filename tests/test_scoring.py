import numpy as np
import pytest

from dfr.planning import keys
from dfr.stages import metrics, scoring
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
    up = metrics.upsample(a, (6, 9))
    assert up.shape == (6, 9)
    assert up.min() >= 0 and up.max() <= 3
    np.testing.assert_allclose(metrics.upsample(np.full((28, 28), 2.5), (100, 80)), 2.5)
    assert metrics.upsample(np.zeros((3, 28, 28)), (50, 50)).shape == (3, 50, 50)


# ---- beyond the paper: a border of A(x) left out (scoring.border) ----

def test_border_is_left_out_of_scores_and_replaced_in_maps():
    from dfr.io import DFRError
    from dfr.stages.scoring import top_k_score, without_border

    a = np.zeros((2, 6, 6), np.float32)
    a[:, 0, :] = 100.0  # a hot top edge, as zero padding can make it
    a[1, 3, 3] = 5.0  # a defect inside
    assert top_k_score(a, 1).tolist() == [100.0, 100.0]
    assert top_k_score(a, 1, border=1).tolist() == [0.0, 5.0]
    b = without_border(a, 1)
    assert b.shape == a.shape and b[:, 0, :].max() == 0.0 and b[1, 3, 3] == 5.0
    np.testing.assert_array_equal(b[:, 1:-1, 1:-1], a[:, 1:-1, 1:-1])  # the interior untouched
    np.testing.assert_array_equal(b[1, 3, 0], b[1, 3, 1])  # the margin copies the nearest interior cell
    assert without_border(a, 0) is a
    with pytest.raises(DFRError, match="scoring.border must be between 0 and 2 for a 6x6 map, got 3"):
        top_k_score(a, 1, border=3)
    with pytest.raises(DFRError, match="without its border of 2"):
        top_k_score(a, 5, border=2)


def test_maps_and_scores_with_a_border(tmp_path):
    import pandas as pd

    from dfr.stages import scoring

    a = np.ones((3, 8, 8), np.float32)
    a[:, :, -1] = 50.0
    meta = pd.DataFrame({"image_id": ["a", "b", "c"], "split": ["val", "test", "test"], "label": [0, 0, 1],
                         "defect": ["good", "good", "x"], "path": "", "mask_path": "", "height": 32, "width": 32})
    scoring.write_maps(tmp_path / "maps.h5", a, meta, {})
    assert scoring.Maps(tmp_path / "maps.h5", border=1).A.max() == 1.0
    assert scoring.Maps(tmp_path / "maps.h5").A.max() == 50.0
    df = scoring.image_scores(tmp_path / "maps.h5", tmp_path / "s.csv", 3, border=1)
    assert (df.score == 1.0).all()


def test_border_config_shares_the_model_and_is_recorded_only_when_used():
    from dfr.planning import config as dfr_config

    base = dfr_config.validate({"datasets": {"s": {"kind": "synthetic", "categories": ["disc"]}}})
    b2 = dfr_config.validate({**base, "scoring": {"top_k": 10, "border": 2}})
    assert keys.metrics_params(base, "s", [])["border"] == 0 and keys.bundle_params(base, [])["border"] == 0
    assert keys.metrics_params(b2, "s", [])["border"] == 2 and keys.bundle_params(b2, [])["border"] == 2
    assert keys.model_key(b2) == keys.model_key(base)  # a scoring setting: models and maps shared
    with pytest.raises(DFRError, match="scoring.border: -1 is less than the minimum of 0"):
        dfr_config.validate({**base, "scoring": {"border": -1}})


def _bilinear(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear interpolation written out (half-pixel centres, edges clamped): the reference for Ã(x)."""
    h, w = a.shape

    def taps(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, fy = taps(out_h, h)
    x0, x1, fx = taps(out_w, w)
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def test_upsample_is_exact_bilinear_interpolation():
    """Ã(x) against bilinear interpolation written out, value by value (one float32 step: exact, then rounded;
    PyTorch's float32 interpolation is off by up to 15 steps here), for up- and non-integer scales;
    corner-aligned sampling (align_corners=True, another convention) would fail it."""
    import torch
    import torch.nn.functional as F

    a = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    for size in ((10, 14), (28, 9), (17, 23)):
        np.testing.assert_allclose(metrics.upsample(a, size), _bilinear(a.astype(np.float64), *size), rtol=1.2e-7,
                                   atol=1e-12)
    corners = F.interpolate(torch.from_numpy(a)[None, None], size=(17, 23), mode="bilinear", align_corners=True)
    assert np.abs(corners[0, 0].numpy() - _bilinear(a.astype(np.float64), 17, 23)).max() > 1e-2
