"""The original in-memory pixel metrics (before the bounded-memory rewrite), kept as a slow reference.

All maps and masks are concatenated, sorted once with argsort and scored with scikit-learn: ~60 bytes per
pixel. Tests compare :mod:`dfr.stages.metrics` against these on random cases with ties and many regions.
"""

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score


def pixel_auroc(maps, masks):
    a = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps])
    y = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in masks])
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, a))


def pro_curve(maps, masks):
    scores, weight, negative = [], [], []
    n_regions = 0
    structure = np.ones((3, 3), dtype=bool)
    for a, m in zip(maps, masks):
        lab, n = ndimage.label(m, structure=structure)
        w = np.zeros(m.shape, dtype=np.float64)
        if n:
            sizes = np.bincount(lab.ravel())
            w[lab > 0] = 1.0 / sizes[lab[lab > 0]]
        n_regions += n
        scores.append(np.asarray(a, dtype=np.float32).ravel())
        weight.append(w.ravel())
        negative.append(~m.ravel())
    s = np.concatenate(scores)
    w = np.concatenate(weight)
    neg = np.concatenate(negative)
    n_neg = int(neg.sum())
    order = np.argsort(-s, kind="mergesort")
    s = s[order]
    fp = np.cumsum(neg[order], dtype=np.float64)
    pro = np.cumsum(w[order]) / n_regions
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    return np.r_[0.0, fp[last] / n_neg], np.r_[0.0, pro[last]]


def integrate_to(x, y, limit):
    keep = x <= limit
    xs, ys = x[keep], y[keep]
    if xs[-1] < limit and keep.sum() < len(x):
        j = int(np.argmax(~keep))
        y_lim = np.interp(limit, [x[j - 1], x[j]], [y[j - 1], y[j]])
        xs, ys = np.r_[xs, limit], np.r_[ys, y_lim]
    return float(np.trapezoid(ys, xs))


def au_pro(maps, masks, fpr_limit=0.3):
    fpr, pro = pro_curve(maps, masks)
    return integrate_to(fpr, pro, fpr_limit) / fpr_limit
