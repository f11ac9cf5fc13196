"""Fault injection: data changes, numerical faults, corrupt or foreign artifacts, degenerate ground truth,
unbiased thresholds. Each fault gives a DFRError that names the file (and the stage where it applies) and
says what to do, and leaves no artifact behind that a rerun would trust."""

import json
import os
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dfr.stages import cache, data, features, metrics, scoring, tables

from dfr import heads
from dfr.heads import common
from dfr.heads.cae import model as cae
from dfr.io import DFRError
from test_cae import _cache

RESNET18 = {"backbone": "resnet18", "weights": "none", "layers": ["layer2[-1]", "layer3[-1]"], "pool": 3,
            "image_size": 64, "normalize": True, "dtype": "float16", "batch_size": 4, "device": "cpu"}


@pytest.fixture
def cat_copy(synth_root, tmp_path):
    shutil.copytree(synth_root / "disc", tmp_path / "disc")
    return tmp_path


def _left_behind(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ---- 1. the fingerprint that makes data changes rerun the index ----

def test_fingerprint_follows_every_kind_of_change_on_disk(cat_copy):
    fp = lambda: data.fingerprint(cat_copy, "disc")  # noqa: E731
    first = fp()
    assert first.startswith(f"{len(list((cat_copy / 'disc').rglob('*.png')))} files ") and fp() == first
    img = cat_copy / "disc" / "train" / "good" / "000.png"
    saved = cat_copy / "saved.png"
    shutil.copy2(img, saved)
    (cat_copy / "disc" / "readme.txt").write_text("not data")  # stray files do not count
    assert fp() == first
    shutil.copy2(img, img.with_name("new.png"))  # added
    added = fp()
    assert added != first
    img.with_name("new.png").unlink()
    assert fp() == first  # back as it was
    img.unlink()  # removed
    assert fp() not in (first, added)
    Image.new("RGB", (240, 192), "red").save(img)  # replaced under the same name
    assert fp() != first
    shutil.copy2(saved, img)
    assert fp() == first
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))  # edited in place (touched)
    assert fp() != first
    mask = next((cat_copy / "disc" / "ground_truth").rglob("*_mask.png"))
    shutil.copy2(saved, img)
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))  # a mask edited
    assert fp() != first
    assert data.fingerprint(cat_copy, "missing") == "absent"


def test_fingerprint_of_a_benchmark_sized_tree_is_fast(tmp_path):
    """MVTec AD + VisA: 16,175 images and 2,458 masks in 27 categories; one stat per file."""
    import time

    from dfr import shapes

    tables = [shapes.MVTEC_AD, shapes.VISA]
    for table in tables:
        for cat, s in table.items():
            for split, n in (("train/good", s.n_train), ("test/good", s.n_test_good), ("test/bad", s.n_test_anomalous),
                             ("ground_truth/bad", s.n_test_anomalous)):
                d = tmp_path / cat / split
                d.mkdir(parents=True)
                for i in range(n):
                    (d / f"{i:03d}.png").touch()
    import builtins
    import io

    def no_open(*a, **k):
        raise AssertionError(f"fingerprint opened a file: {a[:1]}")

    t = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:  # one stat per file, no file opened (what keeps it fast)
        mp.setattr(builtins, "open", no_open)
        mp.setattr(io, "open", no_open)
        fps = [data.fingerprint(tmp_path, c) for t_ in tables for c in t_]
    print(f"fingerprints of 27 categories ({sum(int(f.split()[0]) for f in fps)} files): "
          f"{time.perf_counter() - t:.2f} s")
    assert sum(int(f.split()[0]) for f in fps) == 16175 + 2458


def test_images_differing_only_in_extension_are_refused(cat_copy):
    d = cat_copy / "disc" / "test" / "good"
    shutil.copy(d / "000.png", d / "000.jpg")
    with pytest.raises(DFRError, match=r"test/good: 000\.jpg, 000\.png differ only in extension|"
                                       r"test/good: 000\.png, 000\.jpg differ only in extension"):
        data.index_category(cat_copy, "disc")


# ---- 2. numerical guards ----

def test_non_finite_features_stop_extraction(synth_root, tmp_path, monkeypatch):
    idx = tmp_path / "index.csv"
    data.write_index(data.index_category(synth_root, "disc"), idx)
    real = features.FeatureExtractor.forward

    def overflow(self, x):
        fx = real(self, x)
        fx[-1, 0, 0, 0] = 1e6  # one value of the batch's last image beyond float16's 65504
        return fx

    monkeypatch.setattr(features.FeatureExtractor, "forward", overflow)
    fourth = data.read_index(idx).query("split == 'test'").path.iloc[3]  # the first batch's last image
    with pytest.raises(DFRError, match=rf"index\.csv: non-finite features \(e\.g\. for {fourth}\) in "
                                       r"stage features, split test: they exceed the float16 range of the cache: "
                                       r"set features.dtype: float32"):
        features.extract(idx, "test", tmp_path / "test.h5", RESNET18)
    monkeypatch.setattr(features.FeatureExtractor, "forward", lambda self, x: real(self, x) * float("nan"))
    with pytest.raises(DFRError, match="resnet18 gave NaN/inf: check features.weights"):
        features.extract(idx, "test", tmp_path / "test.h5", RESNET18)
    assert not (tmp_path / "test.h5").exists() and not _left_behind(tmp_path)


def test_non_finite_values_in_a_cache_are_refused_when_read(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    with h5py.File(feats, "a") as f:
        f["features"][3, 0, 0, 0] = np.inf
    with cache.FeatureCache(feats) as c, pytest.raises(DFRError, match=r"train\.h5: non-finite features "
                                                                          r"\(NaN/inf\) for train/good/003; remake it"):
        c.read([2, 3])


def test_training_that_diverges_stops_with_advice(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    params = {"latent_dim": 2, "normalize": False, "batchnorm": False, "epochs": 30, "batch_size": 8,
              "lr": 1e12, "early_stopping": 0, "seed": 0, "device": "cpu"}
    with pytest.raises(DFRError, match=r"train\.h5: stage train diverged in epoch \d+ \(loss (nan|inf)\); try "
                                       r"a lower cae.lr \(now 1e\+12\)"):
        cae.train(feats, split, tmp_path / "m.pt", tmp_path / "h.csv", params)
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "h.csv").exists()
    assert not _left_behind(tmp_path)


def test_a_channel_constant_in_training_does_not_blow_up(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    with h5py.File(feats, "a") as f:
        x = f["features"][()]
        x[:, 5] = 0.0  # a ReLU channel that never fires on the training images
        f["features"][...] = x
    with cache.FeatureCache(feats) as c:
        mean, std = common.channel_stats(c, np.arange(20))
    live = np.median(std[np.arange(16) != 5])
    assert std[5] == pytest.approx(common.STD_FLOOR * live, rel=1e-6)  # relative to the features' scale, not 1e-6
    params = {"latent_dim": 3, "normalize": True, "batchnorm": True, "epochs": 5, "batch_size": 8, "lr": 1e-2,
              "early_stopping": 0, "seed": 0, "device": "cpu"}
    cae.train(feats, split, tmp_path / "m.pt", tmp_path / "h.csv", params)
    model = heads.load(tmp_path / "m.pt")
    with cache.FeatureCache(feats) as c:
        f = torch.from_numpy(c.read([21]))
    dev = f.clone()
    dev[:, 5] += float(live)  # one typical std in the dead channel

    def error(m):
        with torch.no_grad():
            return cae.error_map(dev, m(dev)).max().item()

    e_dead, e_none = error(model), cae.error_map(f, model(f)).max().item()
    assert np.isfinite(e_dead) and e_dead < 10 * e_none  # of the order of a normal image's error
    absolute = heads.load(tmp_path / "m.pt")
    absolute.std[0, 5] = 1e-6  # the former absolute floor
    assert error(absolute) > 1000 * e_dead  # which amplified the deviation a million times


# ---- 3. corrupt or foreign artifacts ----

def _truncate(path, keep=0.5):
    b = path.read_bytes()
    path.write_bytes(b[: int(len(b) * keep)])


def test_truncated_or_foreign_model_is_named_with_advice(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    params = {"latent_dim": 2, "normalize": True, "batchnorm": True, "epochs": 1, "batch_size": 8, "lr": 1e-3,
              "early_stopping": 0, "seed": 0, "device": "cpu"}
    cae.train(feats, split, tmp_path / "m.pt", tmp_path / "h.csv", params)
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**ckpt, "format": 99}, tmp_path / "future.pt")
    with pytest.raises(DFRError, match=r"future\.pt: model file with format 99, this version of DFR reads format 2; "
                                       r"remake it: add --forcerun .*future\.pt to your snakemake command"):
        heads.load(tmp_path / "future.pt")
    del ckpt["format"]
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(DFRError, match=r"old\.pt: model file with no format version"):
        heads.load(tmp_path / "old.pt")
    _truncate(tmp_path / "m.pt")
    with pytest.raises(DFRError, match=r"m\.pt: not a readable model checkpoint, truncated or corrupt .*--forcerun"):
        heads.load(tmp_path / "m.pt")


def test_truncated_corrupt_or_foreign_feature_cache(tmp_path):
    feats, _ = _cache(tmp_path / "train.h5")
    shutil.copy(feats, tmp_path / "t.h5")
    _truncate(tmp_path / "t.h5", 0.6)
    with pytest.raises(DFRError, match=r"t\.h5: not a readable HDF5 feature cache, truncated or corrupt .*--forcerun"):
        cache.FeatureCache(tmp_path / "t.h5")
    shutil.copy(feats, tmp_path / "v.h5")
    with h5py.File(tmp_path / "v.h5", "a") as f:
        f.attrs["format"] = 0
    with pytest.raises(DFRError, match=r"v\.h5: features file with format 0, this version of DFR reads format 1"):
        cache.FeatureCache(tmp_path / "v.h5")
    shutil.copy(feats, tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "a") as f:
        del f["image_id"]
    with pytest.raises(DFRError, match=r"m\.h5: not a complete DFR feature cache"):
        cache.FeatureCache(tmp_path / "m.h5")


def test_a_corrupt_chunk_is_named_when_read(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:  # compressed chunks: damage to one makes its decompression fail
        f.create_dataset("features", data=np.random.default_rng(0).random((4, 8, 4, 4)).astype(np.float16),
                         chunks=(1, 8, 4, 4), compression="gzip")
        cache.write_cache_meta(f, pd.DataFrame({"image_id": [f"i{i}" for i in range(4)], "defect": "",
                                                   "path": "", "mask_path": "", "label": 0, "height": 8,
                                                   "width": 8}), {})
        offset = f["features"].id.get_chunk_info(2).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 4)
        fh.write(b"\xff" * 24)
    with cache.FeatureCache(path) as c:
        c.read([0, 1])
        with pytest.raises(DFRError, match=r"c\.h5: the features of i2 cannot be read \(corrupt or truncated "
                                           r"file: .*\); remake it"):
            c.read([2])


def test_truncated_or_foreign_maps(tmp_path):
    meta = pd.DataFrame({"image_id": ["a"], "split": ["test"], "label": [0], "defect": ["good"], "path": ["x"],
                         "mask_path": [""], "height": [8], "width": [8]})
    scoring.write_maps(tmp_path / "maps.h5", np.ones((1, 4, 4)), meta, {})
    assert scoring.Maps(tmp_path / "maps.h5").A.shape == (1, 4, 4)
    shutil.copy(tmp_path / "maps.h5", tmp_path / "old.h5")
    with h5py.File(tmp_path / "old.h5", "a") as f:
        del f.attrs["format"]
    with pytest.raises(DFRError, match=r"old\.h5: maps file with no format version .* remake it"):
        scoring.Maps(tmp_path / "old.h5")
    _truncate(tmp_path / "maps.h5", 0.5)
    with pytest.raises(DFRError, match=r"maps\.h5: not a readable maps file, truncated or corrupt .*--forcerun"):
        scoring.Maps(tmp_path / "maps.h5")


# ---- 4. degenerate ground truth; 5. thresholds ----

def _maps_with_masks(d, empty_masks: bool, n_val=3):
    rows, A = [], []
    rng = np.random.default_rng(0)
    for k in range(n_val + 6):
        split = "val" if k < n_val else "test"
        bad = split == "test" and k % 2 == 0
        mp = ""
        if bad:
            m = np.zeros((32, 32), np.uint8)
            if not empty_masks:
                m[8:16, 8:16] = 255
            mp = str(d / f"{k}_mask.png")
            Image.fromarray(m).save(mp)
        A.append(rng.random((4, 4)) + bad)
        rows.append({"image_id": f"{k}", "split": split, "label": int(bad), "defect": "x" if bad else "good",
                     "path": "", "mask_path": mp, "height": 32, "width": 32})
    scoring.write_maps(d / "maps.h5", np.stack(A), pd.DataFrame(rows), {})
    scoring.image_scores(d / "maps.h5", d / "scores.csv", 2)


PARAMS = {"alpha": 3.0, "percentile": 99.0, "pixel_fpr": 0.01, "eval_size": None, "pixel": True,
          "pro_fpr_limit": 0.3, "dataset": "d", "category": "c", "val_selected": []}


def test_all_empty_masks_keep_image_metrics_and_mark_pixel_metrics_not_applicable(tmp_path):
    _maps_with_masks(tmp_path, empty_masks=True)
    m = metrics.evaluate(tmp_path / "scores.csv", tmp_path / "maps.h5", tmp_path / "metrics.json", PARAMS)
    assert m["image_auroc"] == 1.0 and m["thresholds"]["f1_optimal"]["f1"] == 1.0
    assert m["pixel"]["applicable"] is False and "auroc" not in m["pixel"] and "pixel" not in m["curves"]
    assert any("every ground-truth mask is empty" in w for w in m["warnings"])
    tables.write([tmp_path / "metrics.json"], "d", tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "v.csv")
    md = (tmp_path / "t.md").read_text()
    assert "| n/a | n/a |" in md and "every ground-truth mask is empty" in md
    assert "nan" not in md.lower()


def test_percentile_on_too_few_images_and_validation_choices_are_warned(tmp_path):
    _maps_with_masks(tmp_path, empty_masks=False, n_val=5)
    m = metrics.evaluate(tmp_path / "scores.csv", tmp_path / "maps.h5", tmp_path / "m.json", PARAMS)
    assert any("99th percentile threshold rests on 5 validation images; estimating it needs at least 100" in w
               for w in m["warnings"])
    assert not any("optimistic" in w for w in m["warnings"])
    m = metrics.evaluate(tmp_path / "scores.csv", tmp_path / "maps.h5", tmp_path / "m.json",
                         {**PARAMS, "percentile": 80.0, "val_selected": ["the model: its checkpoint"]})
    assert not any("percentile" in w for w in m["warnings"]) and any("optimistic" in w for w in m["warnings"])


@pytest.mark.parametrize("n_val, warned", [(1, None), (2, True), (5, True), (9, True), (10, False), (12, False)])
def test_the_sigma_threshold_on_few_held_out_normals_is_warned_and_on_one_refused(tmp_path, n_val, warned):
    """mean + 3σ from fewer than metrics.MIN_VAL_SIGMA held-out normals (PIPED's ensembles threshold on 2) is
    warned with σ's relative uncertainty; from one image, where there is no σ, the metrics refuse it."""
    _maps_with_masks(tmp_path, empty_masks=False, n_val=n_val)
    if warned is None:
        with pytest.raises(DFRError, match="1 validation score.*needs at least 2 held-out normal images"):
            metrics.evaluate(tmp_path / "scores.csv", tmp_path / "maps.h5", tmp_path / "m.json", PARAMS)
        return
    m = metrics.evaluate(tmp_path / "scores.csv", tmp_path / "maps.h5", tmp_path / "m.json", PARAMS)
    hit = [w for w in m["warnings"] if w.startswith(f"the mean + 3*std threshold rests on {n_val} validation")]
    assert bool(hit) == warned, m["warnings"]
    if warned:
        assert f"{100 / np.sqrt(2 * (n_val - 1)):.0f} %" in hit[0]


def test_non_finite_scores_stop_metrics(tmp_path):
    _maps_with_masks(tmp_path, empty_masks=False)
    s = pd.read_csv(tmp_path / "scores.csv")
    s.loc[4, "score"] = np.nan
    s.to_csv(tmp_path / "scores.csv", index=False)
    with pytest.raises(DFRError, match=r"scores\.csv: non-finite image scores for \['4'\] in stage metrics"):
        metrics.evaluate(tmp_path / "scores.csv", tmp_path / "maps.h5", tmp_path / "m.json", PARAMS)
    assert not (tmp_path / "m.json").exists()


def test_checkpoint_last_or_best_val(tmp_path):
    feats, split = _cache(tmp_path / "train.h5")
    params = {"latent_dim": 3, "normalize": True, "batchnorm": True, "epochs": 6, "batch_size": 8, "lr": 5e-2,
              "early_stopping": 0, "seed": 1, "device": "cpu"}
    last = cae.train(feats, split, tmp_path / "l.pt", tmp_path / "l.csv", params)
    best = cae.train(feats, split, tmp_path / "b.pt", tmp_path / "b.csv", {**params, "checkpoint": "best_val"})
    h = pd.read_csv(tmp_path / "l.csv")
    assert last["epoch"] == 6 and best["epoch"] == int(h.val_loss.idxmin()) + 1
    assert torch.load(tmp_path / "l.pt", weights_only=True)["checkpoint"] == "last"
    # the saved weights are the last epoch's: the validation loss of the loaded model is the last one
    with cache.FeatureCache(feats) as c:
        v = torch.from_numpy(c.read(c.positions(json.loads(split.read_text())["val"])))
    with torch.no_grad():
        loss = cae.reconstruction_loss(v, heads.load(tmp_path / "l.pt")(v)).item()
    assert loss == pytest.approx(h.val_loss.iloc[-1], rel=1e-4)


def test_a_cut_or_garbled_scores_table_is_named_not_blamed_on_the_model(tmp_path):
    """scores.csv cut at a row boundary, cut mid-row, or garbled: metrics names the file and the fault, with the
    command that remakes it, instead of computing metrics from what is left or blaming the model."""
    _maps_with_masks(tmp_path, empty_masks=False)
    text = (tmp_path / "scores.csv").read_text()
    lines = text.splitlines(keepends=True)
    fields = lines[3].split(",")
    garbled = ",".join([*fields[:2], "??", *fields[3:]])  # the label of the third image
    cases = {"".join(lines[:7]): r"scores\.csv: 6 rows where its maps hold \d+ images",
             "".join(lines[:7]) + lines[7][:12]: r"scores\.csv: row 8 is incomplete or garbled",
             "".join([*lines[:3], garbled, *lines[4:]]): r"scores\.csv: row 4 is incomplete or garbled"}
    for damaged, message in cases.items():
        (tmp_path / "scores.csv").write_text(damaged)
        with pytest.raises(DFRError, match=message + r".*remake it: add --forcerun .*scores\.csv"):
            metrics.evaluate(tmp_path / "scores.csv", tmp_path / "maps.h5", tmp_path / "m.json", PARAMS)
        assert not (tmp_path / "m.json").exists()


def test_artifacts_honour_the_umask_and_a_killed_writers_temporary_is_cleaned(tmp_path):
    from dfr.io import atomic_path, write_json

    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640  # group-readable, as the umask says
        os.umask(0o022)
        write_json(tmp_path / "b.json", {"x": 1})
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
    orphan = tmp_path / ".train.h5.k1ll3d.h5"  # what a kill -9 during a features job leaves
    orphan.write_bytes(b"half")
    other = tmp_path / ".train.h5x.abc.h5"  # another artifact's: left alone
    other.write_bytes(b"x")
    with atomic_path(tmp_path / "train.h5", suffix=".h5") as tmp:
        tmp.write_bytes(b"whole")
    assert not orphan.exists() and other.exists() and (tmp_path / "train.h5").read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".train.h5x.abc.h5", "a.json", "b.json", "train.h5"]


def test_a_full_disk_ends_in_one_line_naming_the_file(synth_root, tmp_path):
    """Under a file-size limit (ulimit -f, as a full disk) the features job ends with exit 2 and one line naming
    the file and the free space: no traceback, no segmentation fault, nothing half-written left."""
    import subprocess
    import sys

    from conftest import ROOT

    idx = tmp_path / "index.csv"
    data.write_index(data.index_category(synth_root, "disc"), idx)
    params = json.dumps({"backbone": "resnet18", "weights": "none", "layers": ["layer2[-1]", "layer3[-1]"],
                         "pool": 3, "image_size": 64, "normalize": True, "dtype": "float32", "batch_size": 2,
                         "device": "cpu"})
    out = tmp_path / "out" / "train.h5"
    cmd = (f"ulimit -f 64; exec {sys.executable} -m dfr features --index {idx} --split train --out {out} "
           f"--params '{params}'")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "workflow")})
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    line = next(x for x in err if x.startswith("dfr features: error:"))
    assert "could not be written: the file would exceed the size limit" in line and "GB free on" in line, line
    assert not out.exists() and not list(out.parent.glob(".train.h5.*"))
