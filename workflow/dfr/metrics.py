"""Evaluation (§6): image AUROC, thresholds, confusion-matrix metrics; pixel AUROC and AU-PRO.

Thresholds (image level, "anomalous" iff s(x) ≥ T):

* ``f1_optimal``: t* = argmax F1 over all distinct test scores (§6.2). It uses the test labels: an oracle.
* ``val_mean_std``: T = μ + α·σ of the held-out normal validation scores (§3.4).
* ``val_percentile``: the p-th percentile of the validation scores.

AU-PRO follows the MVTec AD evaluation: ground-truth regions are the 8-connected components of the masks,
PRO(t) is the mean over regions of the fraction of the region above t, FPR(t) is over all anomaly-free
pixels of all test images; the curve is exact (cumulative sums over sorted scores, ties collapsed),
integrated by the trapezoid rule up to FPR 0.3 (interpolated there) and divided by 0.3.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from .data import load_mask
from .io import DFRError, provenance, write_json
from .scoring import Maps, read_scores, upsample

log = logging.getLogger(__name__)


def confusion_at(labels: np.ndarray, scores: np.ndarray, t: float) -> dict:
    """Counts and rates of §6.3–6.4 at threshold t (predict anomalous iff score ≥ t)."""
    y = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= t
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    specificity = tn / (tn + fp) if tn + fp else 0.0
    return dict(threshold=float(t), TP=tp, FP=fp, TN=tn, FN=fn, precision=precision, recall=recall, f1=f1,
                specificity=specificity, balanced_accuracy=(recall + specificity) / 2,
                error_pct=100.0 * (fp + fn) / len(y))


def f1_sweep(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F1(t) at every distinct score t (descending), computed exactly with cumulative sums."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each run of ties
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    pos = y.sum()
    precision = tp / (tp + fp)
    recall = tp / pos if pos else np.zeros_like(tp, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return s[last], f1


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """t* = argmax_t F1(t) over all distinct test scores; ties go to the highest threshold."""
    t, f1 = f1_sweep(labels, scores)
    return float(t[int(np.argmax(f1))])


def validation_thresholds(val_scores: np.ndarray, alpha: float, percentile: float) -> dict[str, float]:
    v = np.asarray(val_scores, dtype=np.float64)
    if len(v) == 0:
        raise DFRError("no validation scores: set data.val_fraction > 0 to hold out normal images")
    return {"val_mean_std": float(v.mean() + alpha * v.std()),
            "val_percentile": float(np.percentile(v, percentile))}


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, scores))


def pixel_auroc(maps: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """AUROC over all pixels of all given images (normal images contribute negatives only)."""
    a = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps])
    y = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in masks])
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, a))


def pro_curve(maps: list[np.ndarray], masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Exact (FPR, PRO) points over all distinct thresholds, starting at (0, 0)."""
    scores, weight, negative = [], [], []
    n_regions = 0
    structure = np.ones((3, 3), dtype=bool)  # 8-connectivity
    for a, m in zip(maps, masks):
        if a.shape != m.shape:
            raise DFRError(f"anomaly map {a.shape} and mask {m.shape} differ in size")
        lab, n = ndimage.label(m, structure=structure)
        w = np.zeros(m.shape, dtype=np.float64)
        if n:
            sizes = np.bincount(lab.ravel())
            w[lab > 0] = 1.0 / sizes[lab[lab > 0]]
        n_regions += n
        scores.append(a.ravel())
        weight.append(w.ravel())
        negative.append(~m.ravel())
    if n_regions == 0:
        raise DFRError("no anomalous regions in the ground truth: AU-PRO is undefined")
    s = np.concatenate(scores)
    w = np.concatenate(weight)
    neg = np.concatenate(negative)
    n_neg = int(neg.sum())
    if n_neg == 0:
        raise DFRError("no anomaly-free pixels in the test set: FPR is undefined")
    order = np.argsort(-s, kind="mergesort")
    s = s[order]
    fp = np.cumsum(neg[order], dtype=np.float64)
    pro = np.cumsum(w[order]) / n_regions
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    return np.r_[0.0, fp[last] / n_neg], np.r_[0.0, pro[last]]


def au_pro(maps: list[np.ndarray], masks: list[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to ``fpr_limit``, normalised by ``fpr_limit``."""
    fpr, pro = pro_curve(maps, masks)
    return integrate_to(fpr, pro, fpr_limit) / fpr_limit


def integrate_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid integral of the monotone curve (x, y) from x=0 to x=limit, interpolating y at the limit."""
    keep = x <= limit
    xs, ys = x[keep], y[keep]
    if xs[-1] < limit and keep.sum() < len(x):
        j = int(np.argmax(~keep))  # first point past the limit
        y_lim = np.interp(limit, [x[j - 1], x[j]], [y[j - 1], y[j]])
        xs, ys = np.r_[xs, limit], np.r_[ys, y_lim]
    return float(np.trapezoid(ys, xs) if hasattr(np, "trapezoid") else np.trapz(ys, xs))


def _eval_pair(a: np.ndarray, mask_path: str, hw: tuple[int, int], eval_size: int | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Upsampled map and boolean mask at the evaluation resolution (the mask's own, or eval_size²)."""
    h, w = (eval_size, eval_size) if eval_size else hw
    if mask_path:
        m = load_mask(mask_path)
        if eval_size:
            m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
        elif m.shape != tuple(hw):
            h, w = m.shape
    else:
        m = np.zeros((h, w), dtype=bool)
    return upsample(a, (h, w)), m


def test_pairs(maps: Maps, eval_size: int | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Ã(x) and the ground-truth mask of every test image, at the evaluation resolution."""
    meta = maps.meta
    amaps, masks = [], []
    for i in np.nonzero((meta.split == "test").to_numpy())[0]:
        r = meta.iloc[i]
        a, m = _eval_pair(maps.A[i], r.mask_path, (int(r.height), int(r.width)), eval_size)
        amaps.append(a)
        masks.append(m)
    return amaps, masks


def evaluate(scores_csv: str | Path, maps_h5: str | Path, out: str | Path, params: dict) -> dict:
    """Per-category metrics into metrics.json."""
    scores = read_scores(scores_csv)
    test = scores[scores.split == "test"]
    val = scores[scores.split == "val"]
    y, s = test.label.to_numpy(), test.score.to_numpy()
    result: dict = {
        "dataset": params.get("dataset"), "category": params.get("category"),
        "n_test": int(len(test)), "n_test_anomalous": int(y.sum()), "n_val": int(len(val)),
        "image_auroc": image_auroc(y, s),
    }
    t_star = f1_optimal_threshold(y, s)
    thr = {"f1_optimal": {**confusion_at(y, s, t_star), "oracle": True}}
    if len(val):
        for name, t in validation_thresholds(val.score.to_numpy(), params["alpha"], params["percentile"]).items():
            thr[name] = {**confusion_at(y, s, t), "oracle": False}
    result["thresholds"] = thr

    maps = Maps(maps_h5)
    meta = maps.meta
    has_masks = bool((test.mask_path != "").any())
    if has_masks and params.get("pixel", True):
        eval_size = params.get("eval_size")
        amaps, masks = test_pairs(maps, eval_size)
        pixel = {"auroc": pixel_auroc(amaps, masks),
                 "au_pro": au_pro(amaps, masks, params.get("pro_fpr_limit", 0.3)),
                 "eval_size": eval_size, "n_pixels": int(sum(a.size for a in amaps))}
        vi = np.nonzero((meta.split == "val").to_numpy())[0]
        if len(vi):
            vals = np.concatenate([
                upsample(maps.A[i], (eval_size, eval_size) if eval_size
                         else (int(meta.height[i]), int(meta.width[i]))).ravel() for i in vi])
            pixel["fpr_target"] = params["pixel_fpr"]
            pixel["t_pixel"] = float(np.quantile(vals, 1 - params["pixel_fpr"]))
        result["pixel"] = pixel
    else:
        result["pixel"] = None
    result.update(provenance(params))
    write_json(out, result)
    log.info("%s/%s: image AUROC %.4f%s", result["dataset"], result["category"], result["image_auroc"],
             f", pixel AUROC {result['pixel']['auroc']:.4f}, AU-PRO {result['pixel']['au_pro']:.4f}"
             if result["pixel"] else "")
    return result
