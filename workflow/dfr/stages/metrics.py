"""Evaluation (§6): image AUROC, thresholds, confusion-matrix metrics; pixel AUROC and AU-PRO.

Thresholds (image level, "anomalous" iff s(x) ≥ T):

* ``f1_optimal``: t* = argmax F1 over all distinct test scores (§6.2). It uses the test labels: an oracle.
* ``val_mean_std``: T = μ + α·σ of the held-out normal validation scores (§3.4).
* ``val_percentile``: the p-th percentile of the validation scores.

AU-PRO follows the MVTec AD evaluation: ground-truth regions are the 8-connected components of the masks,
PRO(t) is the mean over regions of the fraction of the region above t, FPR(t) is over all anomaly-free
pixels of all test images; the area is exact (every distinct threshold, ties collapsed), integrated by the
trapezoid rule up to FPR 0.3 (interpolated there) and divided by 0.3. Both pixel metrics are computed in
bounded memory (:class:`PixelEvaluator`, ~8 bytes per evaluated pixel), one image upsampled at a time;
metrics.json also stores thinned ROC and PRO curves, which the plots draw.

MVTec AD 2's metrics sit beside them on every data set with masks: AU-PRO up to FPR 0.05 (and 0.3), and
SegF1, the F1 of the test pixels binarised at mean + α·σ of the held-out normal images' pixels (the
baseline threshold of MVTec AD 2's public evaluation notes), counted over all test pixels at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from dfr.stages.data import load_mask
from dfr.io import DFRError, provenance, remake_hint, write_json
from dfr.stages.scoring import Maps, read_scores

log = logging.getLogger(__name__)

# The code version of the metrics and thresholds (and of Ã(x), the upsampled maps they are computed on, here):
# dfr.keys reads it (without importing this module) into the params and keys of what it makes. Bump it when a
# change alters what is written (tests/test_golden.py fails until it is).
CODE_VERSIONS = {"metrics": 5}  # 3: the sigma warning and refusal, the few-label pixel thresholds; 4: SegF1, AU-PRO@0.05;
# 5: Ã(x) in numpy, exact bilinear rounded once to float32 (PyTorch's float32 source positions were off by up to
# 1e-5 at values of 5), and the image AUROC and ROC in numpy (scikit-learn's curve dropped collinear points; the
# curve now has one point per distinct score): on the golden input the metrics agree to 4 digits; points of the
# thinned pixel ROC moved
# AU-PRO's FPR limits reported beside the configured one: MVTec AD 2 reports 0.05, MVTec AD 0.3
PRO_LIMITS = (0.05, 0.3)
# tests/test_golden.py: per version, the digests of the stage's fixed tiny input and of its rounded output
GOLDEN = {"metrics": {3: ("f7e82cdc4b75f59e", "a0fa4f12a7433a56"), 4: ("8ccc632bdd4f65c9", "37fe00875692cc8b"),
                    5: ("8ccc632bdd4f65c9", "fb2299793ed5c39b")}}


def _taps(out: int, n: int) -> np.ndarray:
    """[out, n] weights of bilinear resampling of ``n`` cells to ``out`` samples: pixel centres aligned
    (align_corners=False, as PyTorch, OpenCV and PIL resize), a source position before the first centre clamped
    to it, two taps a row summing to 1."""
    x = np.maximum((np.arange(out) + 0.5) * (n / out) - 0.5, 0.0)
    x0 = np.minimum(x.astype(np.int64), n - 1)
    x1 = np.minimum(x0 + 1, n - 1)
    w = np.zeros((out, n), np.float64)
    rows = np.arange(out)
    np.add.at(w, (rows, x0), 1.0 - (x - x0))
    np.add.at(w, (rows, x1), x - x0)
    return w


def upsample(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Ã(x): bilinear upsampling of A(x) [H, W] (or [N, H, W]) to ``size`` = (height, width), float32.

    Rows, then columns, as products with the tap matrices (:func:`_taps`) in float64, written into the float32
    result a block of rows at a time: the result is the only full-size array (4 bytes a pixel). The one
    implementation: metrics, plots, ``dfr predict`` and the submission."""
    h, w = (int(s) for s in size)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3:
        return np.stack([upsample(x, (h, w)) for x in a]) if len(a) else np.zeros((0, h, w), np.float32)
    rows = _taps(h, a.shape[0]) @ a  # [h, W]
    cols = _taps(w, a.shape[1]).T  # [W, w]
    out = np.empty((h, w), np.float32)
    step = max(1, 2**20 // max(w, 1))  # 8 MB of float64 a block
    for r in range(0, h, step):
        out[r:r + step] = rows[r:r + step] @ cols
    return out


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


def counts_at_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, TP(t), FP(t)) at every distinct score t, descending: the images with s(x) ≥ t, counted with
    cumulative sums over the scores sorted once (ties in one step)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each run of ties
    tp = np.cumsum(y)[last]
    return s[last], tp, last + 1 - tp


def f1_sweep(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F1(t) at every distinct score t (descending), computed exactly with cumulative sums."""
    t, tp, fp = counts_at_scores(labels, scores)
    pos = np.asarray(labels).astype(bool).sum()
    precision = tp / (tp + fp)
    recall = tp / pos if pos else np.zeros_like(tp, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return t, f1


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """t* = argmax_t F1(t) over all distinct test scores; ties go to the highest threshold."""
    t, f1 = f1_sweep(labels, scores)
    return float(t[int(np.argmax(f1))])


# The mean + alpha*sigma threshold's sigma, from n held-out normal images, is uncertain by about 1/sqrt(2(n - 1))
# of itself (±24 % at 10): below this many the metrics warn; below 2 there is no sigma and they refuse.
MIN_VAL_SIGMA = 10


def validation_thresholds(val_scores: np.ndarray, alpha: float, percentile: float) -> dict[str, float]:
    v = np.asarray(val_scores, dtype=np.float64)
    if len(v) < 2:
        raise DFRError(f"{len(v)} validation score(s): the mean + alpha*std threshold needs at least 2 held-out "
                       "normal images (an ensemble's thresholds use half of them): raise data.val_fraction")
    return {"val_mean_std": float(v.mean() + alpha * v.std()),
            "val_percentile": float(np.percentile(v, percentile))}


def labelled_cut(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold that a few labelled images set: the F1-optimal cut among them (:func:`f1_optimal_threshold`),
    placed midway between the score it is at and the next lower one, so that it does not sit on a labelled
    defect's own score."""
    t = f1_optimal_threshold(labels, scores)
    below = np.asarray(scores, dtype=np.float64)
    below = below[below < t]
    return float((t + below.max()) / 2) if below.size else t


FEW_LABEL_RATES = ("precision", "recall", "f1", "specificity", "balanced_accuracy", "error_pct")


def few_label_thresholds(labels: np.ndarray, scores: np.ndarray, val_scores: np.ndarray, ks: list[int],
                         draws: int, seed: int, alpha: float, picks: dict | None = None) -> dict:
    """§8.4 few-label calibration of the image threshold, for each k in ``ks``.

    k = 0 is the label-free μ + ασ of the held-out normals. For k > 0, ``draws`` seeded draws of k defective test
    images each: the threshold is the cut among the held-out normals and those k (:func:`labelled_cut`), and its
    precision, recall and F1 are computed on the test images *less those k* (they are labelled, so no longer
    test images). Reported: the mean and spread over the draws, and the first draw's threshold (what a bundle
    carries). A k larger than the test set's defective images is marked not applicable. ``picks``, when given,
    receives each k's draws (positions in ``labels``), for the pixel thresholds (:func:`few_label_pixel`)."""
    y, s = np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64)
    val = np.asarray(val_scores, dtype=np.float64)
    defects = np.nonzero(y == 1)[0]
    out = {}
    for k in ks:
        if k == 0:
            per = [confusion_at(y, s, float(val.mean() + alpha * val.std()))]
        elif k > len(defects):
            out[str(k)] = {"k": k, "applicable": False,
                           "reason": f"the test set holds {len(defects)} defective images, fewer than k"}
            continue
        else:
            rng = np.random.default_rng([seed, k])
            per = []
            for _ in range(draws):
                pick = rng.choice(defects, size=k, replace=False)
                if picks is not None:
                    picks.setdefault(k, []).append(pick)
                t = labelled_cut(np.r_[np.zeros(len(val), int), np.ones(k, int)], np.r_[val, s[pick]])
                keep = np.ones(len(y), bool)
                keep[pick] = False
                per.append(confusion_at(y[keep], s[keep], t))
        out[str(k)] = {"k": k, "applicable": True, "draws": len(per), "threshold": per[0]["threshold"],
                       **{r: float(np.mean([p[r] for p in per])) for r in FEW_LABEL_RATES},
                       "f1_std": float(np.std([p["f1"] for p in per])),
                       "n_evaluated": len(y) - k}
    return out


def pixel_f1_cut(pos: np.ndarray, neg: np.ndarray) -> float:
    """The pixel threshold that labelled pixels set: the F1-optimal cut, among the anomalous pixels' own scores
    (F1 can only peak there), placed midway between it and the next lower score of any pixel. ``neg`` is
    sorted in place (4 bytes a pixel, no copy)."""
    pos = np.sort(np.asarray(pos, dtype=np.float32))
    neg.sort()
    cand = np.unique(pos)
    tp = pos.size - np.searchsorted(pos, cand, "left")
    fp = neg.size - np.searchsorted(neg, cand, "left")
    t = float(cand[int(np.argmax(2 * tp / (tp + fp + pos.size)))])
    below = [a[np.searchsorted(a, t, "left") - 1] for a in (pos, neg) if np.searchsorted(a, t, "left") > 0]
    return (t + float(max(below))) / 2 if below else t


def _at_least(t: float, dtype=np.float32):
    """The smallest value of ``dtype`` at or above ``t``: ``a >= _at_least(t)`` is exactly ``a >= t`` for an array
    of that dtype, compared in it (a float64 ``t`` would make searchsorted copy the whole array to float64)."""
    v = dtype(t)
    return np.nextafter(v, dtype(np.inf)) if float(v) < float(t) else v  # compared in float64, not in dtype


def _pixel_counts(pos: np.ndarray, neg_sorted: np.ndarray, t: float) -> tuple[int, int]:
    """(anomalous pixels at or above t, anomaly-free pixels at or above t), without a copy of either array."""
    tp = _at_least(t, pos.dtype.type)
    tn = _at_least(t, neg_sorted.dtype.type)
    return int(np.count_nonzero(pos >= tp)), int(neg_sorted.size - np.searchsorted(neg_sorted, tn, "left"))


def few_label_pixel(ev: "PixelEvaluator", maps: Maps, test_rows: np.ndarray, eval_size: int | None,
                    val_pixels: np.ndarray | None, t_pixel: float | None, picks: dict[int, list]) -> dict:
    """§8.4 for the pixel threshold: for each k and draw of :func:`few_label_thresholds`, T_pixel is the pixel
    F1-optimal cut (:func:`pixel_f1_cut`) on the k labelled images' pixels with the held-out normals' pixels
    as anomaly-free ones, and its pixel precision, recall and F1 are computed over the test set's pixels less
    the labelled images' (the evaluator's counts minus theirs; the labelled images are upsampled again, k at a
    time). k = 0 is the label-free T_pixel. Memory: the evaluator's, one copy of the validation pixels, and
    the k labelled images."""
    ev._finish()
    P, N = ev.pos.size, ev.neg.size

    def rates(tp, fp, p):
        prec = tp / (tp + fp) if tp + fp else float("nan")
        rec = tp / p if p else float("nan")
        return {"precision": prec, "recall": rec, "f1": 2 * tp / (tp + fp + p) if tp + fp + p else float("nan")}

    out = {}
    if t_pixel is not None:
        tp, fp = _pixel_counts(ev.pos, ev.neg, t_pixel)
        out["0"] = {"k": 0, "threshold": t_pixel, "draws": 1, **rates(tp, fp, P), "f1_std": 0.0}
    for k, draws in picks.items():
        per, thresholds = [], []
        for pick in draws:
            lab_pos, lab_neg = [], []
            for i in test_rows[pick]:
                m = eval_mask(maps.meta.mask_path[i], (int(maps.meta.height[i]), int(maps.meta.width[i])), eval_size)
                a = upsample(maps.A[i], m.shape)
                lab_pos.append(a[m])
                lab_neg.append(a[~m])
            lp, ln = np.concatenate(lab_pos), np.concatenate(lab_neg)
            if not lp.size:  # labelled defects without a marked pixel set no pixel threshold
                per.append(dict.fromkeys(("precision", "recall", "f1"), float("nan")))
                thresholds.append(float("nan"))
                continue
            negs = np.concatenate([ln, val_pixels]) if val_pixels is not None else ln.copy()
            t = pixel_f1_cut(lp, negs)
            del negs
            tp_all, fp_all = _pixel_counts(ev.pos, ev.neg, t)
            tp_lab, fp_lab = int(np.count_nonzero(lp >= t)), int(np.count_nonzero(ln >= t))
            per.append(rates(tp_all - tp_lab, fp_all - fp_lab, P - lp.size))
            thresholds.append(t)
        out[str(k)] = {"k": k, "threshold": thresholds[0], "draws": len(per),
                       **{r: float(np.mean([p[r] for p in per])) for r in ("precision", "recall", "f1")},
                       "f1_std": float(np.std([p["f1"] for p in per]))}
    return out


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Image AUROC, exact with ties (Mann-Whitney, as the pixel AUROC of :class:`PixelEvaluator`):
    Σ_p [#neg < s_p + #neg ≤ s_p] / (2·P·N) over the anomalous images p; NaN without both classes."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():
        return float("nan")
    neg, pos = np.sort(s[~y]), s[y]
    ranks = np.searchsorted(neg, pos, "left").sum() + np.searchsorted(neg, pos, "right").sum()
    return float(ranks / (2.0 * len(pos) * len(neg)))


def image_roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact image ROC: (FPR, TPR) from (0, 0) at every distinct score, descending (its trapezoid area is
    :func:`image_auroc`)."""
    _, tp, fp = counts_at_scores(labels, scores)
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def pixel_auroc(maps: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """AUROC over all pixels of all given images (normal images contribute negatives only)."""
    return PixelEvaluator.from_arrays(maps, masks).summary()["auroc"]


def au_pro(maps: list[np.ndarray], masks: list[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to ``fpr_limit``, normalised by ``fpr_limit``."""
    return PixelEvaluator.from_arrays(maps, masks).summary(fpr_limit)["au_pro"]


class PixelEvaluator:
    """Exact pixel AUROC, AU-PRO and thinned ROC/PRO curves over a stream of (Ã(x), mask) pairs.

    Memory is bounded by design: 4 bytes per anomaly-free pixel (their scores, sorted once in place) and
    8 per anomalous pixel (its score and its region's number), allocated once from the counts given up
    front; each image's temporaries are freed before the next. Both metrics then follow from ranks in the
    sorted negatives, with ties counted exactly:

    * pixel AUROC (Mann-Whitney): Σ_p [#neg < s_p + #neg ≤ s_p] / (2·P·N) over positive pixels p;
    * AU-PRO: the trapezoid area of (FPR, PRO) over every distinct threshold equals, summed over the
      distinct negative values v with FPR(v) ≤ limit, ΔFPR(v)·(PRO(>v) + PRO(≥v))/2. Exchanging the sums
      gives Σ_p w_p·(#neg in [c, s_p) + #neg in [c, s_p]) / (2·N·R), with w_p = 1/|region of p|, R the
      number of regions and c the lowest negative value still within the limit; the segment that crosses
      the limit is interpolated linearly, as in the MVTec AD evaluation. Per-region sums are integers.
    """

    CHUNK = 1 << 20  # positive pixels per vectorised step (bounds the temporaries)

    def __init__(self, n_negative: int, n_positive: int):
        self.neg = np.empty(int(n_negative), np.float32)
        self.pos = np.empty(int(n_positive), np.float32)
        self.region = np.empty(int(n_positive), np.int32)
        self._sizes: list[np.ndarray] = []
        self._n_neg = self._n_pos = 0
        self._sorted = False

    @classmethod
    def from_arrays(cls, maps: list[np.ndarray], masks: list[np.ndarray]) -> "PixelEvaluator":
        masks = [np.asarray(m, dtype=bool) for m in masks]
        n_pos = sum(int(np.count_nonzero(m)) for m in masks)
        ev = cls(sum(m.size for m in masks) - n_pos, n_pos)
        for a, m in zip(maps, masks):
            ev.add(a, m)
        return ev

    @property
    def n_regions(self) -> int:
        return sum(len(s) for s in self._sizes)

    def add(self, a: np.ndarray, mask: np.ndarray) -> None:
        """One image's upsampled map Ã(x) and boolean ground-truth mask, at the same resolution."""
        a = np.asarray(a, dtype=np.float32)
        mask = np.asarray(mask, dtype=bool)
        if a.shape != mask.shape:
            raise DFRError(f"anomaly map {a.shape} and mask {mask.shape} differ in size")
        if not np.isfinite(a).all():
            raise DFRError("anomaly map has non-finite values (NaN or inf): the model or its features diverged")
        neg = a[~mask]
        i, j = self._n_neg, self._n_neg + neg.size
        if j > self.neg.size:
            raise DFRError(f"more anomaly-free pixels than the {self.neg.size} counted up front")
        self.neg[i:j] = neg
        self._n_neg = j
        del neg
        from scipy import ndimage

        lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))  # 8-connected regions
        if n:
            i, j = self._n_pos, self._n_pos + int(np.count_nonzero(mask))
            if j > self.pos.size:
                raise DFRError(f"more anomalous pixels than the {self.pos.size} counted up front")
            self.pos[i:j] = a[mask]
            r = lab[mask]
            r += self.n_regions - 1
            self.region[i:j] = r
            self._n_pos = j
            self._sizes.append(np.bincount(lab.ravel(), minlength=n + 1)[1:])
        self._sorted = False

    def _finish(self) -> None:
        if (self._n_neg, self._n_pos) != (self.neg.size, self.pos.size):
            raise DFRError(f"pixel counts differ from those given up front: {self._n_neg} of {self.neg.size} "
                           f"anomaly-free and {self._n_pos} of {self.pos.size} anomalous pixels were added")
        if not self._sorted:
            self.neg.sort()  # in place: no copy
            self._sorted = True

    def summary(self, fpr_limit: float = 0.3, curve_points: int = 201) -> dict:
        """``auroc``, ``au_pro`` (up to ``fpr_limit``, normalised) and thinned ``curve`` points."""
        self._finish()
        neg, N, P = self.neg, self.neg.size, self.pos.size
        if N == 0:
            raise DFRError("no anomaly-free pixels in the test set: FPR is undefined")
        R = self.n_regions
        if R == 0:
            raise DFRError("no anomalous regions in the ground truth: AU-PRO is undefined")
        w = 1.0 / np.concatenate(self._sizes).astype(np.float64)  # each region's weight

        # c: the lowest negative value whose FPR (#neg >= c / N) is within the limit; c2: the next one below
        k = min(N, int(np.floor(fpr_limit * N)))
        while k < N and (k + 1) / N <= fpr_limit:
            k += 1
        while k > 0 and k / N > fpr_limit:
            k -= 1
        idx_c = N - k  # candidate: the k-th largest negative
        if k and searchsorted(neg, neg[idx_c]) < idx_c:  # its ties reach below the limit: next value up
            idx_c = searchsorted(neg, neg[idx_c], "right")
        c2 = neg[idx_c - 1] if idx_c > 0 else None  # the first point past the limit
        x0 = (N - idx_c) / N
        x1 = (N - searchsorted(neg, c2)) / N if c2 is not None else None

        # thinned curve: thresholds at evenly spaced FPRs (0..1 and 0..limit), plus just above the top negative
        ranks = np.unique(np.round(np.r_[np.linspace(0, 1, curve_points),
                                         np.linspace(0, min(fpr_limit, 1), curve_points)] * N).astype(np.int64))
        ranks = ranks[ranks >= 1]
        t = np.unique(np.r_[neg[N - ranks], np.nextafter(neg[-1], np.float32(np.inf))])

        auc2 = 0  # Σ (#neg < s + #neg <= s), an exact integer
        full = np.zeros(R)  # per region: Σ_p (#neg in [c, s_p) + #neg in [c, s_p])
        above = np.zeros(R)  # per region: #pixels > c2 and >= c2
        at_or_above = np.zeros(R)
        tp_hist = np.zeros(len(t) + 1)
        pro_hist = np.zeros(len(t) + 1)
        for s in range(0, P, self.CHUNK):
            sc, rg = self.pos[s:s + self.CHUNK], self.region[s:s + self.CHUNK]
            lt = np.searchsorted(neg, sc, "left")
            le = np.searchsorted(neg, sc, "right")
            auc2 += int(lt.sum()) + int(le.sum())
            lt -= idx_c
            le -= idx_c
            np.maximum(lt, 0, out=lt)
            np.maximum(le, 0, out=le)
            lt += le
            full += np.bincount(rg, weights=lt, minlength=R)
            del lt, le
            if c2 is not None:
                above += np.bincount(rg, weights=sc > c2, minlength=R)
                at_or_above += np.bincount(rg, weights=sc >= c2, minlength=R)
            kt = np.searchsorted(t, sc, "right")  # thresholds at or below each score
            tp_hist += np.bincount(kt, minlength=len(t) + 1)
            pro_hist += np.bincount(kt, weights=w[rg], minlength=len(t) + 1)
        area = float(np.dot(w, full)) / (2.0 * N * R)
        if c2 is not None and x0 < fpr_limit:  # the segment that crosses the limit, interpolated
            y0, y1 = float(np.dot(w, above)) / R, float(np.dot(w, at_or_above)) / R
            y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_lim) / 2
        fpr = (N - np.searchsorted(neg, t, "left")) / N
        tpr = np.cumsum(tp_hist[::-1])[::-1][1:] / max(P, 1)  # #pos >= t_i: thresholds t_0..t_i <= s
        pro = np.cumsum(pro_hist[::-1])[::-1][1:] / R
        # points by descending threshold, i.e. ascending FPR
        return {"auroc": auc2 / (2.0 * P * N) if P else float("nan"), "au_pro": area / fpr_limit,
                "n_pixels": N + P, "n_anomalous_pixels": P, "n_regions": R,
                "curve": {"threshold": t[::-1].tolist(), "fpr": fpr[::-1].tolist(), "tpr": tpr[::-1].tolist(),
                          "pro": pro[::-1].tolist()}}


def searchsorted(a: np.ndarray, v, side: str = "left") -> int:
    return int(np.searchsorted(a, v, side))


def eval_mask(mask_path: str, hw: tuple[int, int], eval_size: int | None) -> np.ndarray:
    """A test image's boolean ground truth at the evaluation resolution (the mask's own, or eval_size²);
    all False for an image without a mask."""
    if not mask_path:
        return np.zeros((eval_size, eval_size) if eval_size else tuple(hw), dtype=bool)
    m = load_mask(mask_path)
    if eval_size:
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((eval_size, eval_size), Image.NEAREST)) > 0
    return m


def pixel_metrics(maps: Maps, eval_size: int | None, fpr_limit: float, keep: bool = False):
    """Pixel AUROC, AU-PRO and thinned curves of a category's test images, streamed image by image; None
    when no mask marks any pixel (the pixel metrics are then undefined).

    A first pass counts each image's anomalous pixels (masks only); the second upsamples one A(x) at a
    time into the preallocated :class:`PixelEvaluator`, so the peak is ~8 bytes per evaluated pixel. With
    ``keep``, (the summary, the evaluator) for the few-label pixel thresholds.
    """
    meta = maps.meta
    rows = np.nonzero((meta.split == "test").to_numpy())[0]
    hw = {i: (int(meta.height[i]), int(meta.width[i])) for i in rows}
    n_total = n_pos = 0
    for i in rows:
        m = eval_mask(meta.mask_path[i], hw[i], eval_size)
        n_total += m.size
        n_pos += int(np.count_nonzero(m))
    if n_pos == 0:
        return (None, None) if keep else None
    ev = PixelEvaluator(n_total - n_pos, n_pos)
    for i in rows:
        m = eval_mask(meta.mask_path[i], hw[i], eval_size)
        ev.add(upsample(maps.A[i], m.shape), m)
    out = ev.summary(fpr_limit)
    return (out, ev) if keep else out


def pixel_threshold(maps: Maps, eval_size: int | None, fpr: float, keep: bool = False) -> dict | None:
    """The validation images' upsampled pixels (4 bytes a pixel, one image upsampled at a time): ``t_pixel``,
    their (1 − fpr) quantile, and their ``mean`` and ``std`` (for the segmentation threshold μ + α·σ); with
    ``keep``, the ``pixels`` themselves for the few-label pixel thresholds. None without validation images."""
    meta = maps.meta
    rows = np.nonzero((meta.split == "val").to_numpy())[0]
    if not len(rows):
        return None
    sizes = [(eval_size, eval_size) if eval_size else (int(meta.height[i]), int(meta.width[i])) for i in rows]
    vals = np.empty(sum(h * w for h, w in sizes), np.float32)
    at = 0
    for i, hw in zip(rows, sizes):
        a = upsample(maps.A[i], hw).ravel()
        vals[at:at + a.size] = a
        at += a.size
    out = {"mean": float(vals.mean(dtype=np.float64)), "std": float(vals.std(dtype=np.float64))}
    out["t_pixel"] = float(np.quantile(vals, 1 - fpr, overwrite_input=True))
    out["pixels"] = vals if keep else None
    return out


def seg_f1(ev: "PixelEvaluator", t: float) -> dict:
    """The segmentation F1 of MVTec AD 2 (SegF1) and its precision and recall: the test images' pixels binarised
    at ``t`` ("anomalous" iff Ã ≥ t), counted over all of them at once (pooled, not averaged per image)."""
    ev._finish()
    tp, fp = _pixel_counts(ev.pos, ev.neg, t)
    p = ev.pos.size
    return {"threshold": t, "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / p if p else float("nan"), "f1": 2 * tp / (tp + fp + p) if tp + fp + p else float("nan")}


def evaluate(scores_csv: str | Path, maps_h5: str | Path, out: str | Path, params: dict) -> dict:
    """Per-category metrics, and the curves the plots draw, into metrics.json."""
    scores = read_scores(scores_csv, Maps(maps_h5).meta)
    if not np.isfinite(scores.score.to_numpy(float)).all():
        bad = scores.image_id[~np.isfinite(scores.score.to_numpy(float))].tolist()
        raise DFRError(f"{scores_csv}: non-finite image scores for {bad[:5]} in stage metrics, from finite maps: "
                       + remake_hint(scores_csv))
    test = scores[scores.split == "test"]
    val = scores[scores.split == "val"]
    y, s = test.label.to_numpy(), test.score.to_numpy()
    warnings: list[str] = []
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
        if len(val) < MIN_VAL_SIGMA:
            warnings.append(f"the mean + {params['alpha']:g}*std threshold rests on {len(val)} validation images: "
                            f"their std is uncertain by about {100 / np.sqrt(2 * (len(val) - 1)):.0f} % of itself "
                            f"(below {MIN_VAL_SIGMA} images): raise data.val_fraction")
        needed = int(np.ceil(100 / (100 - params["percentile"]))) if params["percentile"] < 100 else None
        if needed and len(val) < needed:
            warnings.append(f"the {params['percentile']:g}th percentile threshold rests on {len(val)} validation "
                            f"images; estimating it needs at least {needed} (with fewer it is about their maximum): "
                            "raise data.val_fraction or prefer the mean + alpha*std threshold")
        chosen = params.get("val_selected") or []
        if chosen:
            warnings.append("the validation images also chose " + "; ".join(chosen)
                            + ", so the validation thresholds are optimistic")
    result["thresholds"] = thr
    ks = params.get("few_labels") or []
    picks: dict = {}
    if ks and len(val):
        result["few_label"] = {
            "labels_from": "defective test images drawn at random (seeded); each row is computed on the test set "
                           "less its k labelled images; k = 0 is the label-free mean + alpha*std",
            "draws": int(params["few_label_draws"]),
            "k": few_label_thresholds(y, s, val.score.to_numpy(), ks, int(params["few_label_draws"]),
                                      int(params["seed"]), params["alpha"], picks)}
    curves: dict = {}
    if len(np.unique(y)) == 2:
        fpr, tpr = image_roc(y, s)
        curves["image_roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}

    has_masks = bool((test.mask_path != "").any())
    if has_masks and params.get("pixel", True):
        maps = Maps(maps_h5, int(params.get("border", 0)))
        eval_size = params.get("eval_size")
        limit = params.get("pro_fpr_limit", 0.3)
        few_pixel = "few_label" in result
        val_px = pixel_threshold(maps, eval_size, params["pixel_fpr"], keep=few_pixel)
        t_pixel, val_pixels = (val_px["t_pixel"], val_px.pop("pixels")) if val_px else (None, None)
        px, ev = pixel_metrics(maps, eval_size, limit, keep=True)
        if px is not None:  # MVTec AD 2's metrics beside ours, on every data set with masks
            px["au_pro_by_limit"] = {f"{f:g}": (px["au_pro"] if f == limit else ev.summary(f, 2)["au_pro"])
                                     for f in PRO_LIMITS}
            if val_px:
                px["seg_f1"] = {**seg_f1(ev, val_px["mean"] + params["alpha"] * val_px["std"]),
                                "rule": f"mean + {params['alpha']:g}*std of the validation images' pixels",
                                "val_mean": val_px["mean"], "val_std": val_px["std"]}
        if px is not None and few_pixel:
            test_rows = np.nonzero((maps.meta.split == "test").to_numpy())[0]
            result["few_label"]["pixel"] = few_label_pixel(ev, maps, test_rows, eval_size, val_pixels, t_pixel,
                                                           picks)
        ev = val_pixels = None  # the peak ends here
        if px is None:
            warnings.append("every ground-truth mask is empty: pixel AUROC and AU-PRO are not applicable "
                            "(check the masks under ground_truth/)")
            pixel = {"applicable": False, "reason": "every ground-truth mask is empty", "eval_size": eval_size}
        else:
            curves["pixel"] = {**px.pop("curve"), "fpr_limit": limit}
            pixel = {"applicable": True, "auroc": px["auroc"], "au_pro": px["au_pro"], "eval_size": eval_size,
                     "n_pixels": px["n_pixels"], "n_anomalous_pixels": px["n_anomalous_pixels"],
                     "n_regions": px["n_regions"], "au_pro_by_limit": px["au_pro_by_limit"]}
            if "seg_f1" in px:
                pixel["seg_f1"] = px["seg_f1"]
        if t_pixel is not None:
            pixel["fpr_target"] = params["pixel_fpr"]
            pixel["t_pixel"] = t_pixel
        result["pixel"] = pixel
    else:
        result["pixel"] = None
    result["curves"] = curves
    result["warnings"] = warnings
    result.update(provenance(params))
    write_json(out, result)
    px = result["pixel"] or {}
    log.info("%s/%s: image AUROC %.4f%s", result["dataset"], result["category"], result["image_auroc"],
             f", pixel AUROC {px['auroc']:.4f}, AU-PRO {px['au_pro']:.4f}" if px.get("applicable") else "")
    for w in warnings:
        log.warning("%s/%s: %s", result["dataset"], result["category"], w)
    return result
