"""Aggregated tables like the paper's Tables 1 and 2: one row per category and a mean row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dfr.io import atomic_path, read_json, write_text

# The code version of the tables: dfr.keys reads it (without importing
# this module) into the params and keys of what it makes. Bump it when a change alters what is written.
CODE_VERSIONS = {"tables": 4}  # 4: AU-PRO@0.05 and SegF1 (MVTec AD 2's metrics)
# tests/test_golden.py: per version, the digests of the stage's fixed tiny input and of its rounded output
GOLDEN = {"tables": {2: ("ed3145f28475f72c", "fce213c530f03ef3"), 3: ("3df138cae4fbbdcd", "fce213c530f03ef3"),
                    4: ("9a2cf7c03136e5d5", "9ff3eac0be054e22")}}  # input re-pinned: metrics 5


COLUMNS = ["Category", "AUROC", "BestThr", "Precision", "Recall", "F1", "Specificity", "Bal. Acc.", "Error%",
           "Pixel AUROC", "AU-PRO", "AU-PRO@0.05", "SegF1"]
VAL_COLUMNS = ["Category", "Threshold", "T", "Precision", "Recall", "F1", "Specificity", "Bal. Acc.",
               "Error%"]
THRESHOLD_NAMES = {"val_mean_std": "μ+ασ (val)", "val_percentile": "percentile (val)"}
PAPER_TABLES = Path(__file__).with_name("paper_tables.csv")
PAPER_NAMES = {"mvtec_ad": "MVTec AD (Table 1)", "visa": "VisA (Table 2)"}
# our column -> the paper table's column (BestThr is left out: thresholds depend on the score scale)
PAPER_COLUMNS = {"AUROC": "auroc", "Precision": "precision", "Recall": "recall", "F1": "f1",
                 "Specificity": "specificity", "Bal. Acc.": "balanced_accuracy", "Error%": "error_pct"}
PAPER_MD = ["AUROC", "F1", "Bal. Acc.", "Error%"]


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
                     "Pixel AUROC": px.get("auroc", np.nan), "AU-PRO": px.get("au_pro", np.nan),
                     "AU-PRO@0.05": (px.get("au_pro_by_limit") or {}).get("0.05", np.nan),
                     "SegF1": (px.get("seg_f1") or {}).get("f1", np.nan)})
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


FEW_COLUMNS = ["Category", "k", "T (first draw)", "Precision", "Recall", "F1", "F1 std", "Specificity",
               "Bal. Acc.", "Error%", "Pixel F1"]


def few_label(metrics_files: list[str | Path]) -> pd.DataFrame:
    """The few-label thresholds' figures (metrics.json few_label): one row per category and k, means per k."""
    rows = []
    for m in sorted((read_json(p) for p in metrics_files), key=lambda m: m["category"]):
        pixel = (m.get("few_label") or {}).get("pixel") or {}
        for k, v in ((m.get("few_label") or {}).get("k") or {}).items():
            if v.get("applicable"):
                rows.append({"Category": m["category"], "k": int(k), "T (first draw)": v["threshold"],
                             "Precision": v["precision"], "Recall": v["recall"], "F1": v["f1"], "F1 std": v["f1_std"],
                             "Specificity": v["specificity"], "Bal. Acc.": v["balanced_accuracy"],
                             "Error%": v["error_pct"], "Pixel F1": (pixel.get(k) or {}).get("f1", float("nan"))})
    df = pd.DataFrame(rows, columns=FEW_COLUMNS)
    if df.empty:
        return df
    means = df.drop(columns=["Category", "T (first draw)"]).groupby("k").mean().reset_index()
    means.insert(0, "Category", "Mean")
    return pd.concat([df.sort_values(["Category", "k"]), means], ignore_index=True)


def paper(benchmark: str) -> pd.DataFrame:
    """The specification's table for a benchmark (mvtec_ad, visa), indexed by category."""
    t = pd.read_csv(PAPER_TABLES, comment="#")
    if benchmark not in set(t.benchmark):
        raise ValueError(f"no paper table for {benchmark!r} (have: {sorted(set(t.benchmark))})")
    return t[t.benchmark == benchmark].set_index("category")


def with_paper(main_df: pd.DataFrame, benchmark: str) -> pd.DataFrame:
    """The main table plus, per metric, the paper's figure and ours minus the paper's; the Mean row's paper
    figures are the means over the categories of this run that the paper reports."""
    ref = paper(benchmark)
    out = main_df.copy()
    cats = out.Category.iloc[:-1]
    have = [c for c in cats if c in ref.index]
    for col, pcol in PAPER_COLUMNS.items():
        vals = [ref.at[c, pcol] if c in ref.index else np.nan for c in cats]
        out[f"{col} (paper)"] = vals + [ref.loc[have, pcol].mean() if have else np.nan]
        out[f"Δ{col}"] = out[col] - out[f"{col} (paper)"]
    if have:  # our mean over the same categories as the paper's
        for col in PAPER_COLUMNS:
            out.loc[out.index[-1], f"Δ{col}"] = (out.loc[out.Category.isin(have), col].mean()
                                                 - out.loc[out.index[-1], f"{col} (paper)"])
    return out


def paper_markdown(df: pd.DataFrame, dataset: str, benchmark: str) -> str:
    cols = ["Category"] + [x for c in PAPER_MD for x in (c, f"{c} (paper)", f"Δ{c}")]
    md = to_markdown(df[cols], f"{dataset} next to the paper's {PAPER_NAMES[benchmark]} (both at the oracle t*; "
                        "Δ = ours − paper)")
    return md


def _counts(df: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Per numeric column: (categories with a value, categories) of the rows above the Mean rows."""
    rows = df[df.Category != "Mean"]
    return {c: (int(rows[c].notna().sum()), len(rows)) for c in df.columns
            if c not in ("Category", "Threshold") and pd.api.types.is_numeric_dtype(df[c])}


def to_markdown(df: pd.DataFrame, title: str) -> str:
    """A table; a Mean cell taken over fewer categories than the table has says over how many."""
    counts = _counts(df) if "Threshold" not in df.columns else {}

    def fmt(col: str, v) -> str:
        theirs = col.endswith(" (paper)") or col.startswith("Δ") or col in ("BestThr", "T", "T (first draw)")
        col = col.removesuffix(" (paper)")
        if isinstance(v, str):
            return v
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "—" if theirs else "n/a"  # no figure to compare with / a metric undefined here
        if col == "Error%":
            return f"{v:.2f}%"
        if col in ("BestThr", "T", "T (first draw)"):
            return f"{v:.4g}"
        if col == "k":
            return f"{v:.0f}"
        if col.startswith("Δ"):
            return f"{v:+.2f}" if col == "ΔError%" else f"{v:+.3f}"
        return f"{v:.3f}"

    lines = [f"### {title}", "", "| " + " | ".join(df.columns) + " |",
             "|" + "|".join("---" if c in ("Category", "Threshold") else "---:" for c in df.columns) + "|"]
    for _, r in df.iterrows():
        cells = [fmt(c, r[c]) for c in df.columns]
        if r["Category"] == "Mean":
            cells = [f"**{x}**" + (f" (over {counts[c][0]} of {counts[c][1]})"
                                   if c in counts and 0 < counts[c][0] < counts[c][1] else "")
                     for x, c in zip(cells, df.columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(metrics_files: list[str | Path], dataset: str, out_csv: str | Path, out_md: str | Path,
          out_val_csv: str | Path, reference: str | None = None) -> None:
    """The tables of one dataset; with ``reference`` (mvtec_ad, visa) the paper's figures beside ours."""
    main_df, val_df = build(metrics_files)
    if reference:
        main_df = with_paper(main_df, reference)
    notes = [f"- {m['category']}: {w}" for m in sorted((read_json(f) for f in metrics_files),
                                                       key=lambda m: m["category"]) for w in m.get("warnings", [])]
    body = main_df.iloc[:-1]
    for col in ("AUROC", "Precision", "Recall", "F1", "Specificity", "Bal. Acc.", "Error%"):
        for cat in body.Category[body[col].isna()]:  # an undefined metric (e.g. a test set of one class)
            notes.append(f"- {cat}: {col} is n/a (undefined for this category's test set); the Mean is taken over "
                         f"the other {int(body[col].notna().sum())} of {len(body)} categories")
    with atomic_path(out_csv, suffix=".csv") as tmp:
        main_df.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(out_val_csv, suffix=".csv") as tmp:
        val_df.to_csv(tmp, index=False, float_format="%.6g")
    md = to_markdown(main_df[COLUMNS], f"{dataset}: image-level performance at the F1-optimal threshold t* "
                              "(oracle: t* is chosen with the test labels)")
    if not val_df.empty:
        md += "\n" + to_markdown(val_df, f"{dataset}: at thresholds from held-out normal validation images "
                                        "(no test labels used)")
    few = few_label(metrics_files)
    if not few.empty:
        md += "\n" + to_markdown(few, f"{dataset}: at thresholds set with k labelled defective test images and the "
                                      "held-out normals (§8.4; each row on the test set less its k images, the mean "
                                      "over seeded draws; k = 0 is the label-free mean + alpha*std; Pixel F1 at the pixel threshold "
                                      "set likewise by the k images' pixels and the held-out normals', k = 0 T_pixel)")
    if reference:
        md += "\n" + paper_markdown(main_df, dataset, reference)
    if main_df[["Pixel AUROC", "AU-PRO"]].iloc[:-1].isna().any().any():
        md += "\nn/a: no ground-truth masks, or all of them empty; the mean is over the other categories.\n"
    if notes:
        md += "\nWarnings:\n" + "\n".join(notes) + "\n"
    write_text(out_md, md)
