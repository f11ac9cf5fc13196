import hashlib

import numpy as np
import pytest
from PIL import Image

from dfr import synthetic
from dfr.io import DFRError


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_and_counts(synth_root):
    d = synth_root / "disc"
    assert len(list((d / "train" / "good").glob("*.png"))) == 8
    assert len(list((d / "test" / "good").glob("*.png"))) == 3
    for kind in synthetic.DEFECTS:
        imgs = sorted((d / "test" / kind).glob("*.png"))
        masks = sorted((d / "ground_truth" / kind).glob("*_mask.png"))
        assert len(imgs) == 2 and len(masks) == 2
        assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in imgs]


def test_masks_exact_binary_and_sized(synth_root):
    for cat in ("disc", "grain"):
        spec = synthetic.CATEGORIES[cat]
        for m in (synth_root / cat / "ground_truth").rglob("*_mask.png"):
            a = np.asarray(Image.open(m))
            assert a.shape == (spec.height, spec.width)
            assert set(np.unique(a)) == {0, 255}
            img = np.asarray(Image.open(str(m).replace("ground_truth", "test").replace("_mask", "")))
            assert img.shape[:2] == a.shape


def test_defect_changes_only_masked_pixels():
    spec = synthetic.CATEGORIES["weave"]
    rng = synthetic._rng(0, "weave", "test/stain", 0)
    img, fg = synthetic._normal(spec, rng)
    out, mask = synthetic._defect(spec, img, fg, "stain", rng)
    changed = np.any(np.abs(out - img) > 1e-12, axis=-1)
    assert mask.any()
    assert not changed[~mask].any()
    assert changed[mask].mean() > 0.9


def test_grey_category_is_saved_grey(synth_root):
    p = next((synth_root / "grain" / "train" / "good").glob("*.png"))
    assert Image.open(p).mode == "L"


def test_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        synthetic.generate_category(root, "weave", n_train=3, n_test_good=1, n_test_defect=1, seed=3)
    assert _digest(a) == _digest(b)
    synthetic.generate_category(tmp_path / "c", "weave", n_train=3, n_test_good=1, n_test_defect=1, seed=4)
    assert _digest(tmp_path / "c") != _digest(a)


def test_unknown_category_and_defect(tmp_path):
    with pytest.raises(DFRError, match="unknown synthetic category"):
        synthetic.generate_category(tmp_path, "nope")
    with pytest.raises(DFRError, match="unknown synthetic defect"):
        synthetic.generate_category(tmp_path, "disc", defects=("dent",))
