import json

import numpy as np
import pandas as pd
import pytest

from dfr.stages import tables


def _m(cat, auroc, f1, pixel):
    t = {"threshold": 0.5, "TP": 1, "FP": 0, "TN": 1, "FN": 0, "precision": 1.0, "recall": f1, "f1": f1,
         "specificity": 1.0, "balanced_accuracy": 0.9, "error_pct": 10.0}
    return {"dataset": "d", "category": cat, "image_auroc": auroc,
            "thresholds": {"f1_optimal": {**t, "oracle": True}, "val_mean_std": {**t, "threshold": 0.7},
                           "val_percentile": {**t, "threshold": 0.8}},
            "pixel": pixel}


def test_tables_with_mean_rows(tmp_path):
    files = []
    for m in (_m("b", 0.9, 0.8, {"auroc": 0.95, "au_pro": 0.9}), _m("a", 0.7, 0.6, None)):
        p = tmp_path / f"{m['category']}.json"
        p.write_text(json.dumps(m))
        files.append(p)
    tables.write(files, "d", tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "v.csv")
    t = pd.read_csv(tmp_path / "t.csv")
    assert list(t.columns) == tables.COLUMNS
    assert list(t.Category) == ["a", "b", "Mean"]
    assert t.AUROC.iloc[2] == pytest.approx(0.8)
    assert t["Pixel AUROC"].iloc[2] == pytest.approx(0.95)  # mean over categories that have masks
    assert np.isnan(t.BestThr.iloc[2])
    v = pd.read_csv(tmp_path / "v.csv")
    assert len(v) == 4 + 2 and set(v.Threshold) == set(tables.THRESHOLD_NAMES.values())
    md = (tmp_path / "t.md").read_text()
    assert "| a | 0.700 | 0.5 | 1.000 | 0.600 | 0.600 | 1.000 | 0.900 | 10.00% | n/a | n/a |" in md
    assert "n/a: no ground-truth masks, or all of them empty" in md
    assert "oracle" in md and "no test labels" in md


def test_a_nan_metric_is_na_with_a_warning_and_the_mean_says_over_how_many(tmp_path):
    files = []
    for m in (_m("a", 0.9, 0.8, {"auroc": 0.95, "au_pro": 0.9}), _m("b", float("nan"), 0.6, None),
              _m("c", 0.7, 0.7, {"auroc": 0.85, "au_pro": 0.8})):
        p = tmp_path / f"{m['category']}.json"
        p.write_text(json.dumps(m))
        files.append(p)
    tables.write(files, "d", tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "v.csv")
    t = pd.read_csv(tmp_path / "t.csv")
    assert t.AUROC.iloc[3] == pytest.approx(0.8)
    md = (tmp_path / "t.md").read_text()
    assert "| b | n/a |" in md
    assert "**0.800** (over 2 of 3)" in md and "**0.900** (over 2 of 3)" in md  # AUROC, Pixel AUROC
    assert "- b: AUROC is n/a (undefined for this category's test set); the Mean is taken over the other 2 of 3" in md
    assert "**0.700**" in md and "**0.700** (over" not in md  # F1 of every category: no count


def test_the_few_label_table_has_a_row_per_category_and_k_and_means_per_k(tmp_path):
    files = []
    for cat, f1s in (("a", (0.5, 0.7)), ("b", (0.7, 0.9))):
        m = _m(cat, 0.9, 0.8, None)
        m["few_label"] = {"k": {
            "0": {"k": 0, "applicable": True, "threshold": 0.7, "precision": 1.0, "recall": 0.5, "f1": f1s[0],
                  "f1_std": 0.0, "specificity": 1.0, "balanced_accuracy": 0.75, "error_pct": 5.0},
            "1": {"k": 1, "applicable": True, "threshold": 0.6, "precision": 1.0, "recall": 0.8, "f1": f1s[1],
                  "f1_std": 0.1, "specificity": 1.0, "balanced_accuracy": 0.9, "error_pct": 2.0},
            "5": {"k": 5, "applicable": False, "reason": "too few"}}}
        files.append(tmp_path / f"{cat}.json")
        files[-1].write_text(json.dumps(m))
    few = tables.few_label(files)
    assert list(few.Category) == ["a", "a", "b", "b", "Mean", "Mean"] and list(few.k) == [0, 1, 0, 1, 0, 1]
    assert few.F1.iloc[4:].tolist() == pytest.approx([0.6, 0.8])
    tables.write(files, "d", tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "v.csv")
    md = (tmp_path / "t.md").read_text()
    assert "at thresholds set with k labelled defective test images" in md
    assert "| **Mean** | **1** | **—** | **1.000** | **0.800** | **0.800** | **0.100** | **1.000** | **0.900** | **2.00%** |" in md
