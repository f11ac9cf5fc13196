"""Per-category figures (matplotlib, PNG): loss curves, score histogram, ROC, confusion matrix, PRO curve,
and heatmaps of the most and least anomalous test images.

Plots never recompute a metric: the ROC and PRO curves are the thinned curves that the metrics stage stored
in metrics.json; only the heatmaps read maps and images (a few examples)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dfr.stages.data import load_mask  # noqa: E402
from dfr.stages.features import load_image  # noqa: E402
from dfr.stages.metrics import upsample  # noqa: E402
from dfr.io import atomic_path, read_json  # noqa: E402
from dfr.stages.scoring import Maps, read_scores  # noqa: E402

log = logging.getLogger(__name__)

# The code version of the figures: dfr.keys reads it (without importing
# this module) into the params and keys of what it makes. Bump it when a change alters what is written.
CODE_VERSIONS = {"plots": 1}
THRESHOLD_STYLE = {"f1_optimal": ("t* (F1-optimal, oracle)", "tab:red", "-"),
                   "val_mean_std": ("μ+ασ (validation)", "tab:purple", "--"),
                   "val_percentile": ("percentile (validation)", "tab:green", ":")}


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def loss_curve(history: pd.DataFrame, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(history.epoch, history.train_loss, label="train", marker=".")
    if history.val_loss.notna().any():
        ax.plot(history.epoch, history.val_loss, label="validation (held-out normals)", marker=".")
        best = history.loc[history.val_loss.idxmin()]
        ax.axvline(best.epoch, color="grey", lw=0.8, ls="--", label=f"best epoch {int(best.epoch)}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reconstruction loss (Eq. 1)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    _save(fig, path)


def score_histogram(scores: pd.DataFrame, metrics: dict, path: Path, title: str) -> None:
    test = scores[scores.split == "test"]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    bins = np.histogram_bin_edges(scores.score, bins=30)
    ax.hist(test.score[test.label == 0], bins=bins, alpha=0.6, label="normal (test)", color="tab:blue")
    ax.hist(test.score[test.label == 1], bins=bins, alpha=0.6, label="anomalous (test)", color="tab:orange")
    val = scores[scores.split == "val"]
    if len(val):
        ax.hist(val.score, bins=bins, histtype="step", lw=1.5, label="normal (validation)", color="k")
    for key, (label, color, ls) in THRESHOLD_STYLE.items():
        if key in metrics["thresholds"]:
            ax.axvline(metrics["thresholds"][key]["threshold"], color=color, ls=ls, lw=1.5, label=label)
    ax.set_xlabel("image score s(x)")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend(fontsize=7)
    _save(fig, path)


def roc(metrics: dict, path: Path, title: str) -> None:
    """Image-level ROC and, where masks exist, the pixel-level ROC: the curves stored by the metrics stage."""
    curves = metrics.get("curves", {})
    fig, ax = plt.subplots(figsize=(4, 4))
    if "image_roc" in curves:
        c = curves["image_roc"]
        ax.plot(c["fpr"], c["tpr"], lw=2, label=f"image AUROC = {metrics['image_auroc']:.3f}")
    if "pixel" in curves:
        c = curves["pixel"]
        ax.plot([0.0, *c["fpr"]], [0.0, *c["tpr"]], lw=1.5, ls="--",
                label=f"pixel AUROC = {metrics['pixel']['auroc']:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    _save(fig, path)


def confusion(metrics: dict, path: Path, title: str) -> None:
    t = metrics["thresholds"]["f1_optimal"]
    cm = np.array([[t["TN"], t["FP"]], [t["FN"], t["TP"]]])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(cm, cmap="Blues")
    names = [["TN", "FP"], ["FN", "TP"]]
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{names[i][j]}\n{cm[i, j]}", ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks([0, 1], ["normal", "anomalous"])
    ax.set_yticks([0, 1], ["normal", "anomalous"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\nat t* = {t['threshold']:.4g}", fontsize=9)
    _save(fig, path)


def pro(metrics: dict, path: Path, title: str) -> None:
    """The PRO curve up to the FPR limit, from the thinned curve stored by the metrics stage."""
    c = metrics["curves"]["pixel"]
    limit = c["fpr_limit"]
    fpr, pr = np.r_[0.0, c["fpr"]], np.r_[0.0, c["pro"]]
    keep = fpr <= limit
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot(fpr[keep], pr[keep], lw=2, label=f"AU-PRO@{limit} = {metrics['pixel']['au_pro']:.3f}")
    ax.set_xlim(0, limit)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate (pixels)")
    ax.set_ylabel("per-region overlap (PRO)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    _save(fig, path)


def heatmaps(scores: pd.DataFrame, maps: Maps, metrics: dict, outdir: Path, n: int, title: str) -> list[Path]:
    """Input, heatmap overlay, ground truth, binary mask at T_pixel for the n most and n least anomalous."""
    test = scores[scores.split == "test"].sort_values("score", ascending=False)
    pos = {k: i for i, k in enumerate(maps.meta.image_id)}
    t_pixel = (metrics.get("pixel") or {}).get("t_pixel")
    written = []
    amax = float(maps.A.max()) or 1.0
    for tag, rows in (("most", test.head(n)), ("least", test.tail(n)[::-1])):
        fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.6 * len(rows)), squeeze=False)
        for ax_row, (_, r) in zip(axes, rows.iterrows()):
            img = np.asarray(load_image(r.path))
            a = upsample(maps.A[pos[r.image_id]], img.shape[:2])
            gt = load_mask(r.mask_path) if r.mask_path else np.zeros(img.shape[:2], bool)
            ax_row[0].imshow(img)
            ax_row[0].set_title(f"{r.image_id}\ns(x) = {r.score:.4g}", fontsize=8)
            ax_row[1].imshow(img)
            ax_row[1].imshow(a, cmap="jet", alpha=0.5, vmin=0, vmax=amax)
            ax_row[1].set_title("error heatmap Ã(x)", fontsize=8)
            ax_row[2].imshow(gt, cmap="gray", vmin=0, vmax=1)
            ax_row[2].set_title("ground truth", fontsize=8)
            if t_pixel is not None:
                ax_row[3].imshow(a >= t_pixel, cmap="gray", vmin=0, vmax=1)
                ax_row[3].set_title(f"Ã(x) ≥ T_pixel = {t_pixel:.3g}", fontsize=8)
            else:
                ax_row[3].set_title("no T_pixel (no validation images)", fontsize=8)
            for ax in ax_row:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle(f"{title}: {tag} anomalous test images")
        p = outdir / f"heatmaps_{tag}.png"
        _save(fig, p)
        written.append(p)
    return written


def category_figures(scores_csv, maps_h5, metrics_json, history_csv, outdir, params: dict) -> list[Path]:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    maps = Maps(maps_h5, int(params.get("border", 0)))
    scores = read_scores(scores_csv, maps.meta)
    metrics = read_json(metrics_json)
    history = pd.read_csv(history_csv)
    title = f"{metrics.get('dataset')}/{metrics.get('category')}"
    loss_curve(history, outdir / "loss.png", title)
    score_histogram(scores, metrics, outdir / "score_histogram.png", title)
    roc(metrics, outdir / "roc.png", title)
    confusion(metrics, outdir / "confusion_matrix.png", title)
    written = [outdir / f for f in ("loss.png", "score_histogram.png", "roc.png", "confusion_matrix.png")]
    if "pixel" in metrics.get("curves", {}):
        pro(metrics, outdir / "pro_curve.png", title)
        written.append(outdir / "pro_curve.png")
    written += heatmaps(scores, maps, metrics, outdir, int(params.get("n_examples", 3)), title)
    log.info("wrote %d figures to %s", len(written), outdir)
    return written


# ---- a study's figures: each metric against each swept setting (dfr.studies) ----

STUDY_METRICS = ["image_auroc", "pixel_auroc", "au_pro", "f1_oracle", "f1_mean_std"]


def _slice(summary: pd.DataFrame, settings: list[str], key: str, base: dict) -> pd.DataFrame:
    """The variants that sweep `key` with every other setting at its reference: the base config's value
    where some variant has it, else the most common value."""
    s = summary
    for other in settings:
        if other == key:
            continue
        vals = list(summary[other])
        ref = base.get(other) if base.get(other) in vals else max(vals, key=vals.count)
        s = s[s[other] == ref]
    s = s.drop_duplicates(key)
    # numbers ascending after the named values (auto, true/false, layer lists) in the order they come
    number = lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))  # noqa: E731
    order = sorted(range(len(s)), key=lambda i: (1, float(s[key].iloc[i]), 0) if number(s[key].iloc[i])
                   else (0, 0.0, i))
    return s.iloc[order]


def _xlabels(values) -> list[str]:
    return [str(v).lower() if isinstance(v, (bool, np.bool_)) else str(v) for v in values]


def _variants_figure(summary: pd.DataFrame, metrics: list[str], labels: dict[str, str], out: Path) -> None:
    """Named variants: mean image AUROC, pixel AUROC and AU-PRO per variant (bars, the axis zoomed to
    their range), and AU-PRO (else image AUROC) against the scoring speed relative to the reference."""
    shown = [m for m in ("image_auroc", "pixel_auroc", "au_pro") if m in metrics]
    cost = "score_rel" in summary and summary.score_rel.notna().any()
    n = len(summary)
    fig, axes = plt.subplots(1, 2 if cost else 1, figsize=(11 if cost else 6, 1.2 + 0.42 * n), squeeze=False,
                             layout="constrained")
    ax, y, h = axes[0][0], np.arange(n)[::-1], 0.8 / max(1, len(shown))
    for i, m in enumerate(shown):
        ax.barh(y + (len(shown) / 2 - i - 0.5) * h, summary[m], height=h, label=labels[m])
    low = float(np.nanmin(summary[shown].to_numpy()))
    ax.set_xlim(max(0.0, np.floor((low - 0.02) * 50) / 50), 1.0)
    ax.set_yticks(y, summary.variant)
    ax.set_xlabel("mean over categories")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(shown), frameon=False)
    if cost:
        m = "au_pro" if "au_pro" in shown else "image_auroc"
        ax = axes[0][1]
        ax.scatter(summary.score_rel, summary[m], color="tab:green")
        for _, r in summary.iterrows():
            ax.annotate(r.variant, (r.score_rel, r[m]), fontsize=7, xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("scoring speed relative to the reference variant (images/s ratio, log)")
        ax.set_ylabel(f"mean {labels[m]}")
        ax.grid(alpha=0.3)
    fig.suptitle("Study: named variants")
    _save(fig, out)


def study_figures(rows: pd.DataFrame, summary: pd.DataFrame, settings: list[str], base: dict,
                  outdir: str | Path, labels: dict[str, str]) -> list[Path]:
    """summary.png (mean image AUROC, pixel AUROC, AU-PRO and F1 at the validation threshold μ+ασ against every
    swept setting), and per setting
    sweep_<setting>.png (each metric against it: the mean over categories and each category)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    metrics = [m for m in STUDY_METRICS if summary[m].notna().any()]
    slices = {k: _slice(summary, settings, k, base) for k in settings}
    slices = {k: s for k, s in slices.items() if len(s) >= 2}
    written = []
    if not slices:  # named variants: the metrics side by side, and what each costs
        _variants_figure(summary, metrics, labels, outdir / "summary.png")
        return [outdir / "summary.png"]
    fig, axes = plt.subplots(1, len(slices), figsize=(3.6 * len(slices), 3.4), squeeze=False, sharey=True)
    for ax, (k, s) in zip(axes[0], slices.items()):
        x = np.arange(len(s))
        for m in ("image_auroc", "pixel_auroc", "au_pro", "f1_mean_std"):
            if m in metrics:
                ax.plot(x, s[m], marker="o", label=labels[m], ls=":" if m == "f1_mean_std" else "-")
        if base.get(k) in list(s[k]):
            ax.axvline(list(s[k]).index(base[k]), color="0.6", ls="--", lw=1, label="base config")
        ax.set_xticks(x, _xlabels(s[k]), rotation=30 if max(len(t) for t in _xlabels(s[k])) > 6 else 0)
        ax.set_xlabel(k)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean over categories")
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Study: each setting swept with the others at the base config")
    _save(fig, outdir / "summary.png")
    written.append(outdir / "summary.png")
    for k, s in slices.items():
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.3), squeeze=False, layout="constrained")
        x = np.arange(len(s))
        several = rows.dataset.nunique() > 1
        for ax, m in zip(axes[0], metrics):
            for (d, c), g in rows[rows.variant.isin(s.variant)].groupby(["dataset", "category"], sort=False):
                g = g.set_index("variant").loc[list(s.variant)]
                ax.plot(x, g[m], lw=1, alpha=0.6, marker=".", label=f"{d}/{c}" if several else c)
            ax.plot(x, s[m], color="k", lw=2.2, marker="o", label="mean")
            ax.set_xticks(x, _xlabels(s[k]), rotation=30 if max(len(t) for t in _xlabels(s[k])) > 6 else 0)
            ax.set_title(labels[m], fontsize=10)
            ax.set_xlabel(k)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        name = "sweep_" + re.sub(r"[^A-Za-z0-9_.-]+", "-", k) + ".png"
        _save(fig, outdir / name)
        written.append(outdir / name)
    return written
