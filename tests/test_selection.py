"""Choosing a configuration without the test labels it is reported on (dfr.stages.selection)."""

import numpy as np
import pandas as pd
import pytest

from dfr.stages import selection

# Two data sets: "a" (two categories) and "b" (one). "wide" wins on a but loses b's AU-PRO to the paper;
# "steady" is level with the paper on a and ahead on b; "tie" equals the paper everywhere.
FIG = {  # variant -> {(dataset, category): (image AUROC, pixel AUROC, AU-PRO)}
    "paper": {("a", "x"): (0.90, 0.90, 0.70), ("a", "y"): (0.90, 0.90, 0.70), ("b", "z"): (0.90, 0.90, 0.80)},
    "wide": {("a", "x"): (0.95, 0.95, 0.90), ("a", "y"): (0.95, 0.95, 0.90), ("b", "z"): (0.95, 0.95, 0.60)},
    "steady": {("a", "x"): (0.90, 0.90, 0.72), ("a", "y"): (0.90, 0.90, 0.72), ("b", "z"): (0.92, 0.92, 0.85)},
    "tie": {("a", "x"): (0.90, 0.90, 0.70), ("a", "y"): (0.90, 0.90, 0.70), ("b", "z"): (0.90, 0.90, 0.80)},
}


def _rows():
    return pd.DataFrame([{"variant": v, "dataset": d, "category": c, "image_auroc": q[0], "pixel_auroc": q[1],
                          "au_pro": q[2]} for v, f in FIG.items() for (d, c), q in f.items()])


def test_the_rule_qualifies_against_the_reference_on_every_data_set_then_takes_the_highest_au_pro():
    rows = _rows()
    # on both data sets "wide" falls below the paper's AU-PRO on b: "steady" wins
    assert selection.choose(rows, "paper") == "steady"
    # chosen on a alone, "wide" qualifies and has the highest AU-PRO
    assert selection.choose(rows[rows.dataset == "a"], "paper") == "wide"
    # a tie with the reference is the reference; a candidate list restricts the choice (the reference stays in)
    assert selection.choose(rows, "paper", among=["tie"]) == "paper"


def test_nested_leaves_each_data_set_out_and_reports_the_choice_made_without_it():
    n = selection.nested(_rows(), "paper")
    assert n["left_out"] == "dataset" and n["chosen"] == {"a": "steady", "b": "wide"}
    # a is reported under steady (chosen on b), b under wide (chosen on a): wide loses b's AU-PRO
    assert n["means"]["au_pro"] == pytest.approx((0.72 + 0.72 + 0.60) / 3)
    assert n["per_dataset"]["b"]["au_pro"] == pytest.approx(0.60)
    assert n["worst"]["au_pro"] == {"dataset": "b", "category": "z", "vs_reference": pytest.approx(-0.2)}
    # the test-chosen figure of the same rule is higher: the optimism the nested one removes
    assert selection._means(_rows().query("variant == 'steady'"))["au_pro"] > n["means"]["au_pro"]


def test_one_data_set_leaves_its_categories_out():
    rows = _rows().query("dataset == 'a'")
    assert selection.folds(rows) == ("category", ["x", "y"])
    assert selection.nested(rows, "paper")["chosen"] == {"x": "wide", "y": "wide"}


def test_pareto_front_and_the_fast_recommendation():
    summary = pd.DataFrame({"variant": ["paper", "wide", "steady", "tie"], "au_pro": [0.73, 0.80, 0.76, 0.73],
                            "score_rel": [1.0, 0.2, 0.6, np.nan]})
    assert selection.pareto(summary, "au_pro").tolist() == [True, True, True, False]
    rec = selection.recommend(_rows(), summary, "paper")
    assert rec["best"]["variant"] == "steady" and rec["fast"]["among"] == ["paper", "steady"]
    assert rec["fast"]["variant"] == "steady"
    # "fast" cannot take "wide" (0.2x the paper's predict speed): b, chosen on a alone, gets steady, not wide
    assert rec["fast"]["nested"]["chosen"] == {"a": "steady", "b": "steady"}
    assert rec["fast"]["nested"]["means"]["au_pro"] > rec["best"]["nested"]["means"]["au_pro"]
