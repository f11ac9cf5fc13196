"""Choosing a configuration from a study without the test labels of the data it is reported on.

The rule (fixed before any candidate ran; docs/recommended.md): a variant *qualifies* on
some data sets when, on each of them, its mean image AUROC, pixel AUROC and AU-PRO are each at least the
reference variant's (the paper's configuration); among the qualifying variants, the one with the highest mean
AU-PRO over those data sets' categories wins (image AUROC where no category has masks). The reference
always qualifies, so the rule always chooses.

Chosen on every data set, the winner's figures are *test-chosen*: the labels that score it also chose it,
an optimistic estimate. The *nested* (label-free) estimate is leave-one-data-set-out: for each data set in
turn the rule chooses on the others only, and the chosen variant's figures on the left-out one are kept;
their mean over all categories is what the procedure can be expected to give on data it has not seen. With
a single data set, its categories are left out one at a time instead. The *worst category* is the largest
loss, per metric, of the nested choice against the reference on one category.

A second recommendation is the same rule among the variants that predict at least half as fast as the
reference (no more than twice its predict time): ``fast``. Speeds are costs, not labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

QUALITY = ["image_auroc", "pixel_auroc", "au_pro"]
FAST_SPEED = 0.5  # a fast candidate's predict speed relative to the reference (no more than 2x its time)


def key_metric(rows: pd.DataFrame) -> str:
    """The metric the rule ranks by: AU-PRO, or image AUROC where no category has masks."""
    return "au_pro" if rows.au_pro.notna().any() else "image_auroc"


def choose(rows: pd.DataFrame, reference: str, among: list[str] | None = None) -> str:
    """The rule's choice on ``rows`` (one per variant x category, with a ``dataset`` column)."""
    cands = [v for v in dict.fromkeys(rows.variant) if among is None or v in among or v == reference]
    means = rows.groupby(["variant", "dataset"])[QUALITY].mean()
    ref = means.loc[reference]

    def qualifies(v: str) -> bool:
        mine = means.loc[v].reindex(ref.index)
        lower = mine < ref - 1e-12  # False where the reference lacks a metric (no masks): it is not compared
        return not bool(lower.to_numpy().any()) and not bool((mine.isna() & ref.notna()).to_numpy().any())

    key = key_metric(rows)
    score = rows.groupby("variant")[key].mean()
    return max((v for v in cands if qualifies(v)), key=lambda v: (score[v], v == reference))


def folds(rows: pd.DataFrame) -> tuple[str, list[str]]:
    """What is left out in turn: the data sets, or with one data set its categories."""
    col = "dataset" if rows.dataset.nunique() > 1 else "category"
    return col, list(dict.fromkeys(rows[col]))


def nested(rows: pd.DataFrame, reference: str, among: list[str] | None = None) -> dict:
    """Leave-one-out (data sets, else categories): per fold the variant chosen without it, and its figures on it."""
    col, names = folds(rows)
    kept, chosen = [], {}
    for f in names:
        v = choose(rows[rows[col] != f], reference, among)
        chosen[f] = v
        kept.append(rows[(rows[col] == f) & (rows.variant == v)])
    got = pd.concat(kept)
    ref = rows[rows.variant == reference].set_index(["dataset", "category"])[QUALITY]
    delta = got.set_index(["dataset", "category"])[QUALITY] - ref.reindex(got.set_index(["dataset", "category"]).index)
    worst = {}
    for m in QUALITY:
        d = delta[m].dropna()
        if len(d):
            (ds, cat), loss = d.idxmin(), float(d.min())
            worst[m] = {"dataset": ds, "category": cat, "vs_reference": loss}
    return {"left_out": col, "chosen": chosen, "means": _means(got), "per_dataset": _per_dataset(got),
            "worst": worst}


def _means(rows: pd.DataFrame) -> dict:
    return {m: (float(rows[m].mean()) if rows[m].notna().any() else None) for m in QUALITY}


def _per_dataset(rows: pd.DataFrame) -> dict:
    return {d: _means(g) for d, g in rows.groupby("dataset", sort=False)}


def pareto(summary: pd.DataFrame, key: str) -> pd.Series:
    """Whether each variant is on the front of (mean ``key``, predict speed): no other is at least as good in
    both and better in one. A variant without a measured speed is not on it."""
    q, s = summary[key].to_numpy(float), summary.score_rel.to_numpy(float)
    front = []
    for i in range(len(summary)):
        if np.isnan(q[i]) or np.isnan(s[i]):
            front.append(False)
            continue
        dominated = (q >= q[i]) & (s >= s[i]) & ((q > q[i]) | (s > s[i]))
        front.append(not bool(dominated.any()))
    return pd.Series(front, index=summary.index)


def recommend(rows: pd.DataFrame, summary: pd.DataFrame, reference: str) -> dict:
    """``best`` (the rule among every variant) and ``fast`` (among those predicting at ≥ FAST_SPEED of the
    reference's speed), each with its test-chosen and nested figures."""
    out = {}
    fast = list(summary.variant[summary.score_rel >= FAST_SPEED])
    for name, among in (("best", None), ("fast", fast)):
        v = choose(rows, reference, among)
        mine = rows[rows.variant == v]
        out[name] = {"variant": v, "test_chosen": {"means": _means(mine), "per_dataset": _per_dataset(mine),
                                                   "chosen_on": "the test labels it is reported on (optimistic)"},
                     "nested": {**nested(rows, reference, among),
                                "chosen_on": "the other data sets' test labels only (label-free on each)"}}
    out["fast"]["among"] = fast
    return out
