"""Each figure is written, non-empty, with the expected axes labels (no pixel checks)."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from dfr import data, metrics, plots


@pytest.fixture
def category(synth_root, tmp_path):
    """scores.csv, maps.h5, metrics.json and history.csv for the synthetic disc category, made by hand."""
    idx = data.index_category(synth_root, "disc")
    rows = pd.concat([idx[idx.split == "train"].head(3).assign(split="val"), idx[idx.split == "test"]])
    rng = np.random.default_rng(0)
    A = rng.random((len(rows), 8, 8)).astype(np.float32) + rows.label.to_numpy()[:, None, None]
    s = h5py.string_dtype()
    with h5py.File(tmp_path / "maps.h5", "w") as f:
        f["A"] = A
        for k in ("image_id", "split", "defect", "path", "mask_path"):
            f.create_dataset(k, data=rows[k].to_numpy(dtype=object), dtype=s)
        f["label"] = rows.label.to_numpy(np.int8)
        f["orig_size"] = rows[["height", "width"]].to_numpy(np.int32)
    scores = rows.assign(score=A.reshape(len(A), -1).max(1))
    scores.to_csv(tmp_path / "scores.csv", index=False)
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3.0, 2.0, 1.5], "val_loss": [3.2, 2.1, 1.9],
                  "seconds": 0.1, "best": True}).to_csv(tmp_path / "history.csv", index=False)
    metrics.evaluate(tmp_path / "scores.csv", tmp_path / "maps.h5", tmp_path / "metrics.json",
                     {"alpha": 3.0, "percentile": 99.0, "pixel_fpr": 0.01, "eval_size": 64, "pixel": True,
                      "pro_fpr_limit": 0.3, "dataset": "synth", "category": "disc"})
    return tmp_path


def test_every_figure_is_written_with_labels(category, monkeypatch):
    figs = {}
    real_save = plots._save

    def spy(fig, path):
        figs[path.name] = [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]
        real_save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    d = category
    written = plots.category_figures(d / "scores.csv", d / "maps.h5", d / "metrics.json", d / "history.csv",
                                     d / "plots", {"n_examples": 2})
    assert {p.name for p in written} == {"loss.png", "score_histogram.png", "roc.png", "confusion_matrix.png",
                                         "pro_curve.png", "heatmaps_most.png", "heatmaps_least.png"}
    for p in written:
        assert p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figs["loss.png"][0] == ("epoch", "reconstruction loss (Eq. 1)")
    assert figs["score_histogram.png"][0] == ("image score s(x)", "images")
    assert figs["roc.png"][0] == ("false positive rate", "true positive rate")
    assert figs["confusion_matrix.png"][0] == ("predicted", "true")
    assert figs["pro_curve.png"][0] == ("false positive rate (pixels)", "per-region overlap (PRO)")
    assert len(figs["heatmaps_most.png"]) == 2 * 4  # n_examples rows x (input, heatmap, truth, mask)
    m = json.loads((d / "metrics.json").read_text())
    assert m["pixel"]["eval_size"] == 64 and "t_pixel" in m["pixel"]


def test_metrics_without_masks_skip_pixel_metrics(category):
    d = category
    sc = pd.read_csv(d / "scores.csv", keep_default_na=False)
    sc["mask_path"] = ""
    sc.to_csv(d / "scores.csv", index=False)
    m = metrics.evaluate(d / "scores.csv", d / "maps.h5", d / "m.json",
                         {"alpha": 3.0, "percentile": 99.0, "pixel_fpr": 0.01, "eval_size": None, "pixel": True,
                          "pro_fpr_limit": 0.3, "dataset": "synth", "category": "disc"})
    assert m["pixel"] is None and m["image_auroc"] > 0.9
