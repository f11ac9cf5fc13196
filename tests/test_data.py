import shutil

import numpy as np
import pytest
from PIL import Image

from dfr.stages import data, features
from dfr.io import DFRError


@pytest.fixture
def cat_copy(synth_root, tmp_path):
    shutil.copytree(synth_root / "disc", tmp_path / "disc")
    return tmp_path


def test_index_counts_and_columns(synth_root):
    df = data.index_category(synth_root, "disc")
    assert list(df.columns) == data.INDEX_COLUMNS
    assert (df.split == "train").sum() == 8
    test = df[df.split == "test"]
    assert len(test) == 3 + 4 * 2 and test.label.sum() == 8
    assert (test[test.label == 1].mask_path != "").all()
    assert (df[df.label == 0].mask_path == "").all()
    assert set(zip(df.width, df.height)) == {(240, 192)}


def test_stray_files_are_ignored(cat_copy):
    for name in (".DS_Store", "Thumbs.db", "readme.txt"):
        (cat_copy / "disc" / "train" / "good" / name).write_text("x")
        (cat_copy / "disc" / "test" / "scratch" / name).write_text("x")
    df = data.index_category(cat_copy, "disc")
    assert (df.split == "train").sum() == 8


def test_missing_train_good(cat_copy):
    shutil.rmtree(cat_copy / "disc" / "train" / "good")
    with pytest.raises(DFRError, match=r"train/good: missing"):
        data.index_category(cat_copy, "disc")


def test_empty_split(cat_copy):
    for p in (cat_copy / "disc" / "test" / "stain").iterdir():
        p.unlink()
    with pytest.raises(DFRError, match=r"test/stain: no images"):
        data.index_category(cat_copy, "disc")


def test_unknown_category(synth_root):
    with pytest.raises(DFRError, match="category folder not found"):
        data.index_category(synth_root, "bottle")


def test_missing_mask(cat_copy):
    (cat_copy / "disc" / "ground_truth" / "stain" / "000_mask.png").unlink()
    with pytest.raises(DFRError, match=r"stain/000.png: anomalous test image without a mask"):
        data.index_category(cat_copy, "disc")


def test_mask_size_mismatch(cat_copy):
    Image.new("L", (10, 10)).save(cat_copy / "disc" / "ground_truth" / "stain" / "000_mask.png")
    with pytest.raises(DFRError, match=r"000_mask.png: mask is 10x10 but its image is 240x192"):
        data.index_category(cat_copy, "disc")


def test_mask_not_binary(cat_copy):
    a = np.zeros((192, 240), np.uint8)
    a[:10] = 3
    a[10:20] = 255
    Image.fromarray(a).save(cat_copy / "disc" / "ground_truth" / "stain" / "000_mask.png")
    with pytest.raises(DFRError, match="mask is not binary"):
        data.index_category(cat_copy, "disc")


def test_truncated_image(cat_copy):
    p = cat_copy / "disc" / "train" / "good" / "003.png"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DFRError, match=r"003.png: unreadable or truncated image"):
        data.index_category(cat_copy, "disc")


def test_holdout_split_is_seeded_and_disjoint(synth_root):
    df = data.index_category(synth_root, "disc")
    a = data.holdout_split(df, 0.25, seed=1)
    b = data.holdout_split(df, 0.25, seed=1)
    c = data.holdout_split(df, 0.25, seed=2)
    assert a == b and a != c
    assert len(a["val"]) == 2 and len(a["train"]) == 6
    assert not set(a["val"]) & set(a["train"])
    with pytest.raises(DFRError, match="leaves no training images"):
        data.holdout_split(df, 0.99, seed=0)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "1", "CMYK"])
def test_load_image_modes_give_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8))
    if mode == "I;16":
        im = Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 257))
        assert im.mode.startswith("I;16")
    else:
        im = rgb.convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    out = features.load_image(path)
    assert out.mode == "RGB" and out.size == (16, 12)
    if mode == "I;16":  # 16-bit values scale down to the 8-bit grey they came from
        assert np.abs(np.asarray(out)[..., 0].astype(int) - np.asarray(rgb.convert("L")).astype(int)).max() <= 1


def test_preprocess_normalisation():
    im = Image.new("RGB", (50, 30), (124, 116, 104))
    x = features.Preprocess(32, normalize=False)(im)
    assert x.shape == (3, 32, 32) and abs(float(x[0, 0, 0]) - 124 / 255) < 1e-6
    y = features.Preprocess(32, normalize=True)(im)
    assert abs(float(y[0, 0, 0]) - (124 / 255 - 0.485) / 0.229) < 1e-5


def test_all_problems_reported_at_once(cat_copy):
    (cat_copy / "disc" / "ground_truth" / "stain" / "000_mask.png").unlink()
    p = cat_copy / "disc" / "train" / "good" / "003.png"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DFRError, match="2 problem") as e:
        data.index_category(cat_copy, "disc")
    assert "003.png: unreadable" in str(e.value) and "000.png: anomalous test image without a mask" in str(e.value)
