from collections import deque

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score, roc_auc_score, roc_curve

from dfr.stages import metrics
from dfr.io import DFRError


def _score_sets():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    yield y, rng.normal(size=60) + y  # continuous
    yield y, np.round(rng.normal(size=60) + y, 1)  # many ties
    yield np.array([0, 0, 1, 1, 1]), np.array([0.2, 0.5, 0.5, 0.5, 0.9])  # ties across classes
    yield np.array([0, 1, 0, 1]), np.array([1.0, 1.0, 1.0, 1.0])  # all tied


@pytest.mark.parametrize("y,s", list(_score_sets()))
def test_confusion_metrics_match_sklearn(y, s):
    for t in [*np.unique(s), s.min() - 1, s.max() + 1]:  # every distinct score and both extremes
        m = metrics.confusion_at(y, s, t)
        pred = (s >= t).astype(int)
        assert m["precision"] == pytest.approx(precision_score(y, pred, zero_division=0))
        assert m["recall"] == pytest.approx(recall_score(y, pred, zero_division=0))
        assert m["f1"] == pytest.approx(f1_score(y, pred, zero_division=0))
        assert m["specificity"] == pytest.approx(recall_score(1 - y, 1 - pred, zero_division=0))
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert m["error_pct"] == pytest.approx(100 * np.mean(pred != y))
        assert m["TP"] + m["FP"] + m["TN"] + m["FN"] == len(y)


@pytest.mark.parametrize("y,s", list(_score_sets()))
def test_f1_sweep_against_brute_force(y, s):
    ts, f1 = metrics.f1_sweep(y, s)
    np.testing.assert_allclose(ts, np.unique(s)[::-1])
    brute = [f1_score(y, (s >= t).astype(int), zero_division=0) for t in ts]
    np.testing.assert_allclose(f1, brute)
    t_star = metrics.f1_optimal_threshold(y, s)
    assert f1_score(y, (s >= t_star).astype(int)) == pytest.approx(max(brute))


@pytest.mark.parametrize("y,s", list(_score_sets()))
def test_image_auroc_matches_sklearn(y, s):
    assert metrics.image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("y,s", list(_score_sets()))
def test_image_roc_is_sklearns_exact_curve(y, s):
    """Every distinct score a point, from (0, 0), as scikit-learn's curve without its collinear points dropped;
    its trapezoid area is the AUROC."""
    fpr, tpr = metrics.image_roc(y, s)
    ref_fpr, ref_tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_array_equal(fpr, ref_fpr)
    np.testing.assert_array_equal(tpr, ref_tpr)
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(metrics.image_auroc(y, s), abs=1e-12)


def test_validation_thresholds():
    v = np.array([1.0, 2.0, 3.0, 4.0])
    t = metrics.validation_thresholds(v, alpha=3, percentile=50)
    assert t["val_mean_std"] == pytest.approx(2.5 + 3 * np.std(v))
    assert t["val_percentile"] == pytest.approx(2.5)
    with pytest.raises(DFRError, match="val_fraction"):
        metrics.validation_thresholds(np.array([]), 3, 99)


# ---- AU-PRO: hand-derived values ----

def test_au_pro_one_region_perfect():
    m = np.zeros((4, 4), bool)
    m[:2, :2] = True
    a = m.astype(float)
    assert metrics.au_pro([a], [m]) == pytest.approx(1.0)
    assert metrics.pixel_auroc([a], [m]) == pytest.approx(1.0)


def test_au_pro_two_regions_of_different_sizes():
    m = np.zeros((10, 10), bool)
    a = np.zeros((10, 10))
    m[0, 0] = True
    a[0, 0] = 0.9  # region A: 1 pixel
    m[5:8, 5:8] = True  # region B: 9 pixels, 3 high and 6 low
    a[5:8, 5:8] = 0.1
    a[5, 5:8] = 0.8
    neg = np.argwhere(~m)[:9]
    a[tuple(neg.T)] = 0.5  # 9 of 90 normal pixels: FPR 0.1
    # curve (0,0) (0,1/2) (0,2/3) (0.1,2/3) (0.1,1) (1,1): area to 0.3 = 0.1*2/3 + 0.2 = 0.26667
    assert metrics.au_pro([a], [m]) == pytest.approx((0.1 * 2 / 3 + 0.2) / 0.3)


def test_au_pro_normal_image_contributes_false_positives():
    m1 = np.zeros((4, 4), bool)
    m1[:2, :2] = True
    a1 = m1.astype(float)
    m2 = np.zeros((4, 4), bool)
    a2 = np.zeros((4, 4))
    a2[3, :] = 2.0  # 4 of 28 normal pixels above every anomalous one
    # curve (0,0) (1/7,0) (1/7,1) (1,1): area to 0.3 = 0.3 - 1/7
    assert metrics.au_pro([a1, a2], [m1, m2]) == pytest.approx((0.3 - 1 / 7) / 0.3)


def test_au_pro_ties_are_collapsed():
    m = np.zeros((1, 10), bool)
    m[0, :2] = True
    a = np.zeros((1, 10))
    a[0, :3] = 0.5  # both region pixels tie with one normal pixel
    # one point (1/8, 1): area to 0.3 = 0.125 / 2 + 0.175
    assert metrics.au_pro([a], [m]) == pytest.approx((0.0625 + 0.175) / 0.3)


def test_perfect_constant_inverted_maps():
    rng = np.random.default_rng(1)
    masks = [rng.random((16, 16)) > 0.8 for _ in range(3)] + [np.zeros((16, 16), bool)]
    perfect = [m.astype(float) + 0.01 * rng.random(m.shape) * m for m in masks]
    assert metrics.au_pro(perfect, masks) == pytest.approx(1.0)
    assert metrics.pixel_auroc(perfect, masks) == pytest.approx(1.0)
    const = [np.ones(m.shape) for m in masks]
    assert metrics.pixel_auroc(const, masks) == pytest.approx(0.5)
    assert metrics.au_pro(const, masks) == pytest.approx(0.3 * 0.3 / 2 / 0.3)  # the diagonal
    inverted = [1.0 - m for m in masks]
    assert metrics.pixel_auroc(inverted, masks) == pytest.approx(0.0)
    assert metrics.au_pro(inverted, masks) == pytest.approx(0.0)


def test_au_pro_undefined_without_regions():
    with pytest.raises(DFRError, match="no anomalous regions"):
        metrics.au_pro([np.zeros((3, 3))], [np.zeros((3, 3), bool)])


# ---- AU-PRO against a slow, obviously-correct reference ----

def _regions(mask):
    """8-connected components by breadth-first search."""
    seen = np.zeros_like(mask, bool)
    out = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        comp, q = [], deque([start])
        seen[start] = True
        while q:
            i, j = q.popleft()
            comp.append((i, j))
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    u, v = i + di, j + dj
                    if 0 <= u < mask.shape[0] and 0 <= v < mask.shape[1] and mask[u, v] and not seen[u, v]:
                        seen[u, v] = True
                        q.append((u, v))
        out.append(comp)
    return out


def _slow_au_pro(maps, masks, limit=0.3):
    regions = [(k, comp) for k, m in enumerate(masks) for comp in _regions(m)]
    n_neg = sum((~m).sum() for m in masks)
    pts = [(0.0, 0.0)]
    for t in sorted({float(v) for a in maps for v in a.ravel()}, reverse=True):
        fp = sum(((a >= t) & ~m).sum() for a, m in zip(maps, masks))
        pro = np.mean([np.mean([maps[k][p] >= t for p in comp]) for k, comp in regions])
        pts.append((fp / n_neg, pro))
    x, y = np.array(pts).T
    area, i = 0.0, 1
    while i < len(x) and x[i] <= limit:
        area += (x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2
        i += 1
    if i < len(x) and x[i - 1] < limit:
        y_lim = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
        area += (limit - x[i - 1]) * (y_lim + y[i - 1]) / 2
    return area / limit


@pytest.mark.parametrize("seed", range(4))
def test_au_pro_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for k in range(4):
        m = np.zeros((12, 12), bool)
        if k < 3:
            for _ in range(rng.integers(1, 3)):
                i, j = rng.integers(0, 10, 2)
                m[i:i + rng.integers(1, 4), j:j + rng.integers(1, 4)] = True
            m[rng.integers(0, 12), rng.integers(0, 12)] = True  # diagonal neighbours join regions
        masks.append(m)
        maps.append(np.round(rng.random((12, 12)) + 0.6 * m, 1))  # rounding makes many ties
    for limit in (0.3, 0.05, 1.0):
        assert metrics.au_pro(maps, masks, limit) == pytest.approx(_slow_au_pro(maps, masks, limit))
    y = np.concatenate([m.ravel() for m in masks])
    a = np.concatenate([m.ravel() for m in maps])
    assert metrics.pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, a))


# ---- bounded-memory pixel metrics against the original in-memory implementation ----

def _random_case(rng, n_images=6):
    """Maps with many ties (rounded values, also across classes) and masks with many 8-connected regions."""
    maps, masks = [], []
    for k in range(n_images):
        h, w = rng.integers(8, 40, 2)
        m = rng.random((h, w)) > rng.uniform(0.75, 0.97) if k % 3 else np.zeros((h, w), bool)  # speckle
        if k % 3 == 1:
            i, j = rng.integers(0, h // 2), rng.integers(0, w // 2)
            m[i:i + h // 3, j:j + w // 3] = True  # one large region beside the speckles
        decimals = rng.integers(0, 3)
        a = np.round(rng.random((h, w)) + rng.uniform(0, 0.8) * m, decimals).astype(np.float32)
        maps.append(a)
        masks.append(m)
    return maps, masks


@pytest.mark.parametrize("seed", range(12))
def test_pixel_metrics_equal_the_reference_implementation(seed):
    import reference_metrics as ref

    rng = np.random.default_rng(100 + seed)
    maps, masks = _random_case(rng)
    ev = metrics.PixelEvaluator.from_arrays(maps, masks)
    assert ev.n_regions > 5
    for limit in (0.3, 0.05, 1e-3, 0.5, 1.0):
        s = ev.summary(limit)
        assert abs(s["au_pro"] - ref.au_pro(maps, masks, limit)) <= 1e-9, limit
        assert abs(s["auroc"] - ref.pixel_auroc(maps, masks)) <= 1e-9


def test_pixel_metrics_edge_cases_equal_the_reference():
    import reference_metrics as ref

    m = np.zeros((6, 6), bool)
    m[1:3, 1:3] = True
    m[5, 5] = True
    cases = {
        "constant": [np.ones((6, 6), np.float32)],
        "negatives above all positives": [np.where(m, 0.1, 0.9).astype(np.float32)],
        "positives above all negatives": [np.where(m, 0.9, 0.1).astype(np.float32)],
        "one negative at the top": [np.where(m, 0.5, 0.1).astype(np.float32) + np.eye(6, dtype=np.float32)],
    }
    for name, maps in cases.items():
        for limit in (0.3, 1 / 32, 1.0):
            s = metrics.PixelEvaluator.from_arrays(maps, [m]).summary(limit)
            assert abs(s["au_pro"] - ref.au_pro(maps, [m], limit)) <= 1e-9, (name, limit)
            assert abs(s["auroc"] - ref.pixel_auroc(maps, [m])) <= 1e-9, name


def test_thinned_curve_points_lie_on_the_exact_curve():
    rng = np.random.default_rng(7)
    maps, masks = _random_case(rng, 8)
    s = metrics.PixelEvaluator.from_arrays(maps, masks).summary(0.3)
    c = s["curve"]
    a = np.concatenate([x.ravel() for x in maps])
    y = np.concatenate([x.ravel() for x in masks])
    regions = []
    for x, m in zip(maps, masks):
        from scipy import ndimage

        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [x[lab == r] for r in range(1, n + 1)]
    for t, fpr, tpr, pro in zip(c["threshold"], c["fpr"], c["tpr"], c["pro"]):
        assert fpr == pytest.approx(np.mean(a[~y] >= t))
        assert tpr == pytest.approx(np.mean(a[y] >= t))
        assert pro == pytest.approx(np.mean([np.mean(r >= t) for r in regions]))
    assert c["fpr"][0] == 0.0 and c["fpr"][-1] == 1.0
    assert sum(f <= 0.3 for f in c["fpr"]) > 20  # enough points to draw the PRO curve up to the limit


def test_pixel_evaluator_checks_its_input():
    ev = metrics.PixelEvaluator(3, 1)
    with pytest.raises(DFRError, match="differ in size"):
        ev.add(np.zeros((2, 2)), np.zeros((3, 3), bool))
    with pytest.raises(DFRError, match="non-finite"):
        ev.add(np.full((2, 2), np.nan), np.eye(2, dtype=bool)[:, :1].repeat(2, 1) & False)
    with pytest.raises(DFRError, match="counted up front"):
        ev.add(np.zeros((3, 3)), np.eye(3, dtype=bool))
    ev = metrics.PixelEvaluator(3, 1)
    ev.add(np.zeros((1, 2)), np.array([[True, False]]))
    with pytest.raises(DFRError, match="1 of 3 anomaly-free"):
        ev.summary()


def test_a_few_labelled_defects_cut_midway_between_the_scores_they_separate():
    from dfr.stages.metrics import labelled_cut

    # F1 over the cuts: at 5 -> 0, at 3 -> 0.667 (best), at 2 -> 0.5, at 1 -> 0.4; midway to the next lower: 2.5
    assert labelled_cut(np.array([0, 0, 0, 1]), np.array([1.0, 2.0, 5.0, 3.0])) == 2.5
    assert labelled_cut(np.array([0, 1]), np.array([1.0, 1.0])) == 1.0  # nothing below: the cut itself


def test_few_label_thresholds_leave_their_labelled_images_out_and_k0_is_the_label_free_one():
    from dfr.stages.metrics import confusion_at, few_label_thresholds

    rng = np.random.default_rng(0)
    val = rng.uniform(0, 2, 10)  # held-out normals below 2
    y = np.r_[np.zeros(20, int), np.ones(6, int)]
    s = np.r_[rng.uniform(0, 1, 20), np.full(6, 10.0)]  # every defect scores 10: any draw sets the same cut
    out = few_label_thresholds(y, s, val, [0, 1, 3, 7], draws=4, seed=0, alpha=3.0)
    assert out["0"] == {"k": 0, "applicable": True, "draws": 1, "n_evaluated": 26, "f1_std": 0.0,
                             "threshold": val.mean() + 3 * val.std(),
                             **{r: confusion_at(y, s, val.mean() + 3 * val.std())[r] for r in
                                ("precision", "recall", "f1", "specificity", "balanced_accuracy", "error_pct")}}
    for k in (1, 3):
        assert out[str(k)]["threshold"] == (val.max() + 10.0) / 2 and out[str(k)]["draws"] == 4
        assert out[str(k)]["f1"] == 1.0 and out[str(k)]["n_evaluated"] == 26 - k
    assert out["7"] == {"k": 7, "applicable": False, "reason": "the test set holds 6 defective images, fewer than k"}
    # the k labelled images are not scored: with one defect far lower than the rest, a draw that labels it
    # sets a low cut that passes every other defect, and one that does not misses it (recall 4/5 on the rest)
    s2 = s.copy()
    s2[20] = 3.0
    per = few_label_thresholds(y, s2, val, [1], draws=50, seed=1, alpha=3.0)["1"]
    assert 0 < per["f1_std"] and per["recall"] < 1.0 and per["precision"] == 1.0


def test_few_label_pixel_thresholds_segf1_and_au_pro_at_005_match_a_brute_force_reference(tmp_path):
    """The pixel threshold of k labelled defective images (their pixels, with the held-out normals' as
    anomaly-free ones) and its pixel precision, recall and F1 on the test images less those k, against counting
    every pixel directly; k = 0 is the label-free T_pixel."""
    from PIL import Image

    import pandas as pd

    from dfr.stages import scoring

    rng = np.random.default_rng(3)
    rows, A = [], []
    for i in range(14):
        split = "val" if i < 5 else "test"
        bad = split == "test" and i % 2 == 0
        a = rng.random((4, 4)).astype(np.float32)
        mp = ""
        if bad:
            m = np.zeros((12, 12), np.uint8)
            y, x = rng.integers(0, 8, 2)
            m[y:y + 4, x:x + 4] = 255
            a[y // 3, x // 3] += 1.5
            mp = str(tmp_path / f"{i}_mask.png")
            Image.fromarray(m).save(mp)
        A.append(a)
        rows.append({"image_id": f"{i:02d}", "split": split, "label": int(bad), "defect": "x" if bad else "good",
                     "path": "", "mask_path": mp, "height": 12, "width": 12})
    scoring.write_maps(tmp_path / "maps.h5", np.stack(A), pd.DataFrame(rows), {})
    scoring.image_scores(tmp_path / "maps.h5", tmp_path / "scores.csv", 2)
    params = {"alpha": 3.0, "percentile": 99.0, "pixel_fpr": 0.05, "eval_size": None, "pixel": True,
              "pro_fpr_limit": 0.3, "dataset": "d", "category": "c", "val_selected": [],
              "few_labels": [0, 1, 3], "few_label_draws": 3, "seed": 7}
    m = metrics.evaluate(tmp_path / "scores.csv", tmp_path / "maps.h5", tmp_path / "m.json", params)
    got = m["few_label"]["pixel"]

    up = [metrics.upsample(a, (12, 12)) for a in A]
    masks = [metrics.eval_mask(r["mask_path"], (12, 12), None) for r in rows]
    test = [i for i, r in enumerate(rows) if r["split"] == "test"]
    val_px = np.concatenate([up[i].ravel() for i, r in enumerate(rows) if r["split"] == "val"])

    def rates(t, images):
        tp = sum(int((up[i][masks[i]] >= t).sum()) for i in images)
        fp = sum(int((up[i][~masks[i]] >= t).sum()) for i in images)
        p = sum(int(masks[i].sum()) for i in images)
        return tp / (tp + fp), tp / p, 2 * tp / (tp + fp + p)

    t0 = m["pixel"]["t_pixel"]
    assert got["0"]["f1"] == pytest.approx(rates(t0, test)[2], abs=1e-9)

    # MVTec AD 2's metrics beside ours: SegF1 at mean + 3 std of the validation pixels, pooled over the test
    # pixels, and AU-PRO up to FPR 0.05, against counting every pixel and the in-memory reference
    import reference_metrics as ref

    t_seg = float(val_px.astype(np.float64).mean() + 3 * val_px.astype(np.float64).std())
    seg = m["pixel"]["seg_f1"]
    assert seg["threshold"] == pytest.approx(t_seg, rel=1e-12)
    want = rates(t_seg, test)
    assert 0 < want[2] < 1  # neither trivial case
    assert abs(seg["f1"] - want[2]) <= 1e-9 and abs(seg["precision"] - want[0]) <= 1e-9
    assert abs(seg["recall"] - want[1]) <= 1e-9
    for limit in ("0.05", "0.3"):
        assert abs(m["pixel"]["au_pro_by_limit"][limit] - ref.au_pro([up[i] for i in test], [masks[i] for i in test],
                                                                  float(limit))) <= 1e-9
    labels = np.array([rows[i]["label"] for i in test])
    defects = np.nonzero(labels == 1)[0]
    for k in (1, 3):
        r = np.random.default_rng([7, k])
        f1s = []
        for d in range(3):
            pick = [test[j] for j in r.choice(defects, size=k, replace=False)]
            pos = np.concatenate([up[i][masks[i]] for i in pick])
            neg = np.concatenate([*(up[i][~masks[i]] for i in pick), val_px])
            best, best_f1 = None, -1.0
            for t in np.unique(pos):
                tp, fp = (pos >= t).sum(), (neg >= t).sum()
                f1 = 2 * tp / (tp + fp + pos.size)
                if f1 > best_f1:
                    best, best_f1 = t, f1
            lower = np.concatenate([pos, neg])
            lower = lower[lower < best]
            t = (best + lower.max()) / 2 if lower.size else best
            if d == 0:
                assert got[str(k)]["threshold"] == pytest.approx(float(t), abs=1e-7)
            f1s.append(rates(t, [i for i in test if i not in pick])[2])
        assert got[str(k)]["f1"] == pytest.approx(float(np.mean(f1s)), abs=1e-9)
        assert got[str(k)]["f1_std"] == pytest.approx(float(np.std(f1s)), abs=1e-9)


def test_pixel_counts_compare_exactly_without_a_float64_copy():
    """Counting pixels at or above a float64 threshold in float32 arrays: exactly as in float64 (a threshold
    between two float32 values, on one, below all, above all), and searchsorted copies nothing."""
    import tracemalloc

    a = np.sort(np.random.default_rng(0).random(1_000_000).astype(np.float32))
    v = float(a[500_000])
    for t in (v, np.nextafter(v, 2.0), np.nextafter(v, -1.0), (v + float(np.nextafter(np.float32(v), 2))) / 2,
              -1.0, 2.0):
        want = int(np.count_nonzero(a.astype(np.float64) >= t))
        assert metrics._pixel_counts(a, a, t) == (want, want), t
    tracemalloc.start()
    metrics._pixel_counts(a[:10], a, v)
    assert tracemalloc.get_traced_memory()[1] < a.nbytes / 4
    tracemalloc.stop()
