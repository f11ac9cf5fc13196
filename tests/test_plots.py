"""Each figure is written, non-empty, with the expected axes labels (no pixel checks)."""

import json

import numpy as np
import pandas as pd
import pytest

from dfr.stages import data, metrics, plots, scoring


@pytest.fixture
def category(synth_root, tmp_path):
    """scores.csv, maps.h5, metrics.json and history.csv for the synthetic disc category, made by hand."""
    idx = data.index_category(synth_root, "disc")
    rows = pd.concat([idx[idx.split == "train"].head(3).assign(split="val"), idx[idx.split == "test"]])
    rng = np.random.default_rng(0)
    A = rng.random((len(rows), 8, 8)).astype(np.float32) + rows.label.to_numpy()[:, None, None]
    scoring.write_maps(tmp_path / "maps.h5", A, rows, {})
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
    assert len(figs["roc.png"]) == 1 and len(figs["pro_curve.png"]) == 1


def test_plots_draw_the_stored_curves_without_recomputing(category, monkeypatch):
    """The plots read metrics.json's curves: no pixel metric is recomputed, no mask is read for them."""
    d = category
    m = json.loads((d / "metrics.json").read_text())
    assert set(m["curves"]) == {"image_roc", "pixel"}
    c = m["curves"]["pixel"]
    assert len(c["fpr"]) == len(c["tpr"]) == len(c["pro"]) == len(c["threshold"]) <= 402
    assert np.all(np.diff(c["fpr"]) >= 0) and c["fpr"][-1] == 1.0 and c["tpr"][-1] == 1.0
    for name in ("PixelEvaluator", "pixel_metrics", "pixel_threshold"):
        monkeypatch.setattr(metrics, name, None)  # any call would raise TypeError
    drawn = {}
    monkeypatch.setattr(plots.plt.Axes, "plot", lambda ax, x, y, **kw: drawn.setdefault(kw.get("label"), (x, y)))
    monkeypatch.setattr(plots.plt.Axes, "legend", lambda ax, **kw: None)
    plots.roc(m, d / "roc.png", "t")
    plots.pro(m, d / "pro.png", "t")
    pro_label = next(k for k in drawn if k and k.startswith("AU-PRO"))
    x, y = drawn[pro_label]
    assert max(x) <= c["fpr_limit"] and list(y[1:]) == [p for f, p in zip(c["fpr"], c["pro"]) if f <= c["fpr_limit"]]
    assert any(k and k.startswith("pixel AUROC") for k in drawn)


def test_metrics_without_masks_skip_pixel_metrics(category):
    d = category
    sc = pd.read_csv(d / "scores.csv", keep_default_na=False)
    sc["mask_path"] = ""
    sc.to_csv(d / "scores.csv", index=False)
    m = metrics.evaluate(d / "scores.csv", d / "maps.h5", d / "m.json",
                         {"alpha": 3.0, "percentile": 99.0, "pixel_fpr": 0.01, "eval_size": None, "pixel": True,
                          "pro_fpr_limit": 0.3, "dataset": "synth", "category": "disc"})
    assert m["pixel"] is None and m["image_auroc"] > 0.9
