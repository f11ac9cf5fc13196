"""MVTec AD 2 end to end on a generated category in its layout: the held-out normals are its validation/
folder, the metrics carry AU-PRO@0.05, AU-PRO@0.3 and SegF1, and the leaderboard archive holds the private
sets' anomaly images (float16 TIFF at the image's size, 0/255 PNG at the validation threshold) under the
paths MVTec's checker expects."""

import io
import json
import tarfile

import numpy as np
import pytest

from conftest import TINY, planned_jobs, snakemake, tiny_paths

AD2 = {**TINY, "experiment": "tiny-ad2",
       "datasets": {"ad2": {"kind": "synthetic", "categories": ["disc"],
                            "synthetic": {"n_train": 8, "n_test_good": 2, "n_test_defect": 1, "layout": "mvtec_ad2"}}}}


@pytest.mark.slow
def test_a_synthetic_mvtec_ad2_run_writes_its_metrics_and_the_submission_archive(tmp_path):
    import tifffile
    from PIL import Image

    from dfr.stages import data, submission

    archive = "results/tiny-ad2/submission/ad2.tar.gz"
    r = snakemake(tmp_path, AD2, archive, "results/tiny-ad2/tables/ad2.md")  # all but the plots
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = planned_jobs(r.stderr)  # what the run made (its job stats)
    assert jobs["submission_part"] == 1 and jobs["submission"] == 1 and "plots" not in jobs
    p = tiny_paths(tmp_path, AD2, "ad2", "disc")
    root = tmp_path / "results" / "datasets" / "ad2" / "disc"
    val = sorted(f"validation/good/{q.stem}" for q in (root / "validation" / "good").iterdir())
    assert json.loads(p["split"].read_text())["val"] == val
    m = json.loads(p["metrics"].read_text())
    px = m["pixel"]
    assert m["n_val"] == len(val) and set(px["au_pro_by_limit"]) == {"0.05", "0.3"}
    assert px["au_pro_by_limit"]["0.3"] == px["au_pro"] and 0 <= px["au_pro_by_limit"]["0.05"] <= 1
    assert 0 <= px["seg_f1"]["f1"] <= 1 and px["seg_f1"]["threshold"] == submission.seg_threshold(p["metrics"])
    table = (tmp_path / "results" / "tiny-ad2" / "tables" / "ad2.md").read_text()
    assert "AU-PRO@0.05" in table and "SegF1" in table

    idx = data.read_index(p["index"])
    private = idx[idx.split == "private"]
    with tarfile.open(tmp_path / archive) as tar:
        names = sorted(tar.getnames())
        want = sorted([f"anomaly_images/disc/{i}.tiff" for i in private.image_id]
                      + [f"anomaly_images_thresholded/disc/{i}.png" for i in private.image_id])
        assert names == want
        first = private.iloc[0]
        a = tifffile.imread(io.BytesIO(tar.extractfile(f"anomaly_images/disc/{first.image_id}.tiff").read()))
        b = np.asarray(Image.open(io.BytesIO(
            tar.extractfile(f"anomaly_images_thresholded/disc/{first.image_id}.png").read())))
    assert a.dtype == np.float16 and a.shape == (first.height, first.width)
    assert b.shape == a.shape and set(np.unique(b)) <= {0, 255}
    t = px["seg_f1"]["threshold"]  # the PNG binarises the full-precision map; the TIFF holds it in float16
    agree = (b == 255) == (a.astype(np.float32) >= t)
    assert agree.mean() > 0.999  # float16 rounding of Ã can flip pixels within its precision of T only
