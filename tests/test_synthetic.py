import hashlib

import numpy as np
import pytest
from PIL import Image

from dfr import shapes

from dfr.stages import synthetic
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
    for kind in shapes.DEFECTS:
        imgs = sorted((d / "test" / kind).glob("*.png"))
        masks = sorted((d / "ground_truth" / kind).glob("*_mask.png"))
        assert len(imgs) == 2 and len(masks) == 2
        assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in imgs]


def test_masks_exact_binary_and_sized(synth_root):
    for cat in ("disc", "grain"):
        spec = shapes.CATEGORIES[cat]
        for m in (synth_root / cat / "ground_truth").rglob("*_mask.png"):
            a = np.asarray(Image.open(m))
            assert a.shape == (spec.height, spec.width)
            assert set(np.unique(a)) == {0, 255}
            img = np.asarray(Image.open(str(m).replace("ground_truth", "test").replace("_mask", "")))
            assert img.shape[:2] == a.shape


def test_defect_changes_only_masked_pixels():
    spec = shapes.CATEGORIES["weave"]
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


# ---- categories shaped like the real benchmarks (full-size rehearsals) ----

def test_shaped_category_has_the_benchmarks_counts_sizes_and_modes(tmp_path):
    from dfr.stages import data
    from dfr import shapes

    synthetic.generate_category(tmp_path, "grid", shape="mvtec_ad", scale=0.05, size_scale=0.25, seed=0)
    s = shapes.MVTEC_AD["grid"]
    df = data.index_category(tmp_path, "grid")
    train, test = df[df.split == "train"], df[df.split == "test"]
    assert len(train) == round(s.n_train * 0.05) and (test.label == 0).sum() == round(s.n_test_good * 0.05)
    assert (test.label == 1).sum() == round(s.n_test_anomalous * 0.05) == 3
    assert set(test[test.label == 1].defect) == {"scratch", "stain", "missing"}  # spread over the kinds
    assert set(df.width) == set(df.height) == {256}  # 1024 × 0.25
    with Image.open(train.path.iloc[0]) as im:
        assert im.mode == "L"  # grid is grey-scale in MVTec AD


def test_visa_shaped_category_is_jpeg_at_visa_size(tmp_path):
    from dfr.stages import data

    synthetic.generate_category(tmp_path, "pcb1", shape="visa", scale=0.01, size_scale=0.1, seed=0)
    df = data.index_category(tmp_path, "pcb1")
    assert set(df.path.str.rsplit(".", n=1).str[1]) == {"JPG"}
    assert set(zip(df.width, df.height)) == {(150, 100)}
    assert (df.mask_path[df.label == 1] != "").all()


def test_shaped_counts_at_full_scale_add_up_to_the_benchmarks():
    from dfr import shapes

    for name, table in shapes.BENCHMARKS.items():
        for cat, s in table.items():
            n_train, n_good, per_kind = shapes.shaped_counts(cat, name, 1.0)
            assert (n_train, n_good, sum(per_kind)) == (s.n_train + s.n_validation, s.n_test_good, s.n_test_anomalous)
            assert max(per_kind) - min(per_kind) <= 1
    ad2 = shapes.MVTEC_AD2.values()
    assert {"train": sum(s.n_train for s in ad2), "validation": sum(s.n_validation for s in ad2),
            "test_public": sum(s.n_test_good + s.n_test_anomalous for s in ad2),
            "test_private": sum(s.n_private for s in ad2)} == shapes.MVTEC_AD2_TOTALS
    assert {c: shapes.MVTEC_AD2[c].n_validation for c in shapes.MVTEC_AD2_VALIDATION_KNOWN} == \
        shapes.MVTEC_AD2_VALIDATION_KNOWN


def test_mvtec_ad2_shaped_category_has_its_layout_sizes_and_private_counts(tmp_path):
    from dfr.stages import data
    from dfr import shapes

    synthetic.generate_category(tmp_path, "sheet_metal", shape="mvtec_ad2", scale=0.04, size_scale=0.05, seed=0,
                                layout="mvtec_ad2")
    s, croot = shapes.MVTEC_AD2["sheet_metal"], tmp_path / "sheet_metal"
    count = lambda sub: len(list((croot / sub).glob("*.png")))  # noqa: E731
    assert count("validation/good") == shapes.shaped_validation("sheet_metal", "mvtec_ad2", 0.04) == 2  # 19 x 0.04, at least 2
    assert count("train/good") == round(s.n_train * 0.04)
    assert count("test_public/good") == round(s.n_test_good * 0.04)
    assert count("test_public/bad") == count("test_public/ground_truth/bad") == round(s.n_test_anomalous * 0.04)
    assert count("test_private") == count("test_private_mixed") == round(s.n_private * 0.04) == 6
    df = data.index_category(tmp_path, "sheet_metal")
    assert set(zip(df.width, df.height)) == {(211, 53)}  # 4224 x 1056, times 0.05
    with Image.open(df.path.iloc[0]) as im:
        assert im.mode == "L"  # sheet_metal is grey-scale


def test_shaped_unknown_category_or_shape_is_refused(tmp_path):
    with pytest.raises(DFRError, match="not a category of mvtec_ad"):
        synthetic.generate_category(tmp_path, "candle", shape="mvtec_ad")
    with pytest.raises(DFRError, match="unknown synthetic shape"):
        synthetic.generate_category(tmp_path, "bottle", shape="mvtec")
