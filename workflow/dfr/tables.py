"""Aggregated tables like the paper's Tables 1 and 2: one row per category and a mean row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .io import atomic_path, read_json, write_text

COLUMNS = ["Category", "AUROC", "BestThr", "Precision", "Recall", "F1", "Specificity", "Bal. Acc.", "Error%",
           "Pixel AUROC", "AU-PRO"]
VAL_COLUMNS = ["Category", "Threshold", "T", "Precision", "Recall", "F1", "Specificity", "Bal. Acc.",
               "Error%"]
THRESHOLD_NAMES = {"val_mean_std": "μ+ασ (val)", "val_percentile": "percentile (val)"}


def _row(m: dict, key: str) -> dict:
    t = m["thresholds"][key]
    return {"Precision": t["precision"], "Recall": t["recall"], "F1": t["f1"], "Specificity": t["specificity"],
            "Bal. Acc.": t["balanced_accuracy"], "Error%": t["error_pct"]}


def build(metrics_files: list[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(main table at t*, table at the validation thresholds), each with a Mean row."""
    ms = sorted((read_json(p) for p in metrics_files), key=lambda m: m["category"])
    main, val = [], []
    for m in ms:
        px = m.get("pixel") or {}  # no masks, or all empty ("applicable": false): not applicable, n/a
        main.append({"Category": m["category"], "AUROC": m["image_auroc"],
                     "BestThr": m["thresholds"]["f1_optimal"]["threshold"], **_row(m, "f1_optimal"),
                     "Pixel AUROC": px.get("auroc", np.nan), "AU-PRO": px.get("au_pro", np.nan)})
        for key, label in THRESHOLD_NAMES.items():
            if key in m["thresholds"]:
                val.append({"Category": m["category"], "Threshold": label,
                            "T": m["thresholds"][key]["threshold"], **_row(m, key)})
    main_df = pd.DataFrame(main, columns=COLUMNS)
    mean = main_df.drop(columns=["Category", "BestThr"]).mean(numeric_only=True)
    main_df = pd.concat([main_df, pd.DataFrame([{"Category": "Mean", "BestThr": np.nan, **mean}])],
                        ignore_index=True)
    val_df = pd.DataFrame(val, columns=VAL_COLUMNS)
    if not val_df.empty:
        means = (val_df.drop(columns=["Category", "T"]).groupby("Threshold", sort=False).mean().reset_index())
        means.insert(0, "Category", "Mean")
        val_df = pd.concat([val_df, means], ignore_index=True)
    return main_df, val_df


def to_markdown(df: pd.DataFrame, title: str) -> str:
    def fmt(col: str, v) -> str:
        if isinstance(v, str):
            return v
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "n/a" if col in ("Pixel AUROC", "AU-PRO") else "—"
        if col == "Error%":
            return f"{v:.2f}%"
        if col in ("BestThr", "T"):
            return f"{v:.4g}"
        return f"{v:.3f}"

    lines = [f"### {title}", "", "| " + " | ".join(df.columns) + " |",
             "|" + "|".join("---" if c in ("Category", "Threshold") else "---:" for c in df.columns) + "|"]
    for _, r in df.iterrows():
        cells = [fmt(c, r[c]) for c in df.columns]
        if r["Category"] == "Mean":
            cells = [f"**{x}**" for x in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(metrics_files: list[str | Path], dataset: str, out_csv: str | Path, out_md: str | Path,
          out_val_csv: str | Path) -> None:
    main_df, val_df = build(metrics_files)
    notes = [f"- {m['category']}: {w}" for m in sorted((read_json(f) for f in metrics_files),
                                                       key=lambda m: m["category"]) for w in m.get("warnings", [])]
    with atomic_path(out_csv, suffix=".csv") as tmp:
        main_df.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(out_val_csv, suffix=".csv") as tmp:
        val_df.to_csv(tmp, index=False, float_format="%.6g")
    md = to_markdown(main_df, f"{dataset}: image-level performance at the F1-optimal threshold t* "
                              "(oracle: t* is chosen with the test labels)")
    if not val_df.empty:
        md += "\n" + to_markdown(val_df, f"{dataset}: at thresholds from held-out normal validation images "
                                        "(no test labels used)")
    if main_df[["Pixel AUROC", "AU-PRO"]].iloc[:-1].isna().any().any():
        md += "\nn/a: no ground-truth masks, or all of them empty; the mean is over the other categories.\n"
    if notes:
        md += "\nWarnings:\n" + "\n".join(notes) + "\n"
    write_text(out_md, md)
