"""A study's comparison: every variant × category side by side, the cost of each, plots (§8.2).

The variants are expanded by :mod:`dfr.plan`, whose manifest lists, per variant and category, the files this
module reads (each declared as an input of the ``study`` rule): the metrics, the models' sidecars
(``model.json``: parameters, size), the index (image counts) and the jobs' benchmark records (wall time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dfr.stages import plots, selection
from dfr.io import DFRError, atomic_path, read_json, remake_hint, write_json, write_text
from dfr.planning.plan import show

# The comparison's metrics: column -> (label, how to read it from metrics.json)
METRICS = {
    "image_auroc": ("image AUROC", lambda m: m["image_auroc"]),
    "pixel_auroc": ("pixel AUROC", lambda m: (m.get("pixel") or {}).get("auroc", np.nan)),
    "au_pro": ("AU-PRO", lambda m: (m.get("pixel") or {}).get("au_pro", np.nan)),
    # MVTec AD 2's localisation metrics (on every data set with masks): AU-PRO up to FPR 0.05, SegF1
    "au_pro_005": ("AU-PRO@0.05", lambda m: ((m.get("pixel") or {}).get("au_pro_by_limit") or {}).get("0.05", np.nan)),
    "seg_f1": ("SegF1 (val μ+ασ)", lambda m: ((m.get("pixel") or {}).get("seg_f1") or {}).get("f1", np.nan)),
    "f1_oracle": ("F1 at t* (oracle)", lambda m: m["thresholds"]["f1_optimal"]["f1"]),
    "f1_mean_std": ("F1 at μ+ασ (val)", lambda m: m["thresholds"].get("val_mean_std", {}).get("f1", np.nan)),
    "f1_percentile": ("F1 at percentile (val)",
                      lambda m: m["thresholds"].get("val_percentile", {}).get("f1", np.nan)),
    # §8.4: the image threshold set with k labelled defective test images, F1 on the rest (thresholds.few_labels)
    **{f"f1_few_{k}": (f"F1 with {k} labelled", lambda m, k=k: _few_f1(m, k)) for k in (1, 3, 5)},
}


def _few_f1(m: dict, k: int) -> float:
    v = ((m.get("few_label") or {}).get("k") or {}).get(str(k)) or {}
    return v.get("f1", np.nan) if v.get("applicable") else np.nan


# ---- the comparison: a table of every variant x category, plots against each setting, the cost ----

def _bench_seconds(path: Path) -> float:
    if not path.is_file():
        return np.nan
    b = pd.read_csv(path, sep="\t")
    return float(b["s"].iloc[-1]) if len(b) else np.nan


def _model_info(path: Path) -> dict:
    """A model's sidecar (model.json): its latent d and parameters (a Gaussian's: what it stores)."""
    return read_json(path) if path.is_file() else {}


def collect(man: dict, workdir: str | Path = ".") -> pd.DataFrame:
    """One row per variant x dataset x category: the settings, the metrics and the cost.

    Cost, from the jobs' benchmark records that the manifest lists: ``fit_s`` the seconds to fit the model
    (features of the training images, PCA, training), ``score_s`` to score (features of the test images,
    maps, the ensemble's fusion), summed over an ensemble's members; a job shared by several variants is
    counted for each."""
    wd, rows = Path(workdir), []
    for v in man["variants"]:
        for c in v["categories"]:
            m = read_json(wd / c["metrics"])
            infos = [_model_info(wd / p) for p in c["model_info"]]
            n_fit, n_score = _images(wd / c["index"])
            rows.append({"variant": v["name"], **{k: show(x) for k, x in v["settings"].items()},
                         "dataset": c["dataset"], "category": c["category"],
                         **{col: float(f(m)) for col, (_, f) in METRICS.items()},
                         "latent_d": float(np.mean([i.get("latent_dim", np.nan) for i in infos])),
                         "cae_params": float(np.sum([i.get("parameters", np.nan) for i in infos])),
                         "fit_s": float(np.sum([_bench_seconds(wd / r) for r in c["fit"]])),
                         "score_s": float(np.sum([_bench_seconds(wd / r) for r in c["score"]])),
                         "n_fit": n_fit, "n_score": n_score})
    return pd.DataFrame(rows)


def _images(index_csv: Path) -> tuple[float, float]:
    """(training images, test images) of a category from its index; NaN when it is not there."""
    if not index_csv.is_file():
        return np.nan, np.nan
    split = pd.read_csv(index_csv, usecols=["split"]).split
    return float((split == "train").sum()), float((split == "test").sum())


COST = {"fit_ips": "fit img/s (jobs' wall)", "score_ips": "score img/s (timed)", "fit_rel": "fit speed",
        "score_rel": "score speed", "score_job_ips": "score img/s (jobs' wall)"}


def timed_speeds(timing_csv: str | Path) -> pd.DataFrame:
    """Per variant, from the study's timing (dfr.timing): images/s scored over all its timed datasets (total images
    over total seconds)."""
    df = pd.read_csv(timing_csv)
    missing = {"variant", "images", "score_ips"} - set(df.columns)
    if missing:
        raise DFRError(f"{timing_csv}: not a study's timing (no column {', '.join(sorted(missing))}); "
                       + remake_hint(timing_csv))
    g = df.assign(score_s=df.images / df.score_ips).groupby("variant", sort=False)[["images", "score_s"]].sum()
    return pd.DataFrame({"score_ips": g.images / g.score_s})


def _strict_sum(x: pd.Series) -> float:
    return float(x.sum()) if x.notna().all() else np.nan  # a missing record makes the total unknown


def summarise(rows: pd.DataFrame, settings: list[str], reference: str | None = None,
              timed: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per variant: the means over every category (all datasets) of each metric, and the cost as
    images per second (fit: training images; score: test images) and relative to ``reference``'s speed. With
    ``timed`` (:func:`timed_speeds`), the score speed is the timed one; the jobs' is kept as ``score_job_ips``."""
    agg = {col: "mean" for col in METRICS} | {"latent_d": "mean", "cae_params": "mean"}
    agg |= {k: _strict_sum for k in ("fit_s", "score_s", "n_fit", "n_score")}
    out = rows.groupby("variant", sort=False).agg(agg).reset_index()
    first = rows.drop_duplicates("variant").set_index("variant")
    for k in reversed(settings):
        out.insert(1, k, out.variant.map(first[k]))
    with np.errstate(divide="ignore", invalid="ignore"):
        out["fit_ips"] = out.n_fit / out.fit_s.where(out.fit_s > 0)
        out["score_ips"] = out.n_score / out.score_s.where(out.score_s > 0)
    if timed is not None:
        out["score_job_ips"] = out.score_ips
        out["score_ips"] = out.variant.map(timed.score_ips)
    ref = out[out.variant == (reference or out.variant.iloc[0])].iloc[0]
    out["fit_rel"] = out.fit_ips / ref.fit_ips
    out["score_rel"] = out.score_ips / ref.score_ips
    return out.drop(columns=["fit_s", "score_s", "n_fit", "n_score"])


def reference_variant(man: dict) -> str:
    """The variant the costs are relative to: the one that is the base config, else the first."""
    for v in man["variants"]:
        if all(show(v["settings"].get(k)) == b for k, b in man["base"].items()):
            return v["name"]
    return man["variants"][0]["name"]


def _fmt(v: Any, col: str) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    if col in ("fit_ips", "score_ips", "score_job_ips"):
        return f"{v:.1f}"
    if col in ("fit_rel", "score_rel"):
        return f"{v:.2f}×"
    if col == "latent_d":
        return f"{v:.1f}" if v != round(v) else f"{v:.0f}"
    if col == "cae_params":
        return f"{v:,.0f}"
    if isinstance(v, float) and col not in METRICS and v == round(v):
        return f"{v:.0f}"  # an integer setting in a column with gaps (NaN makes it float)
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (int, np.integer)):
        return str(v)
    return f"{v:.3f}"


def _md_table(df: pd.DataFrame, headers: dict[str, str], bold: set[int] = frozenset()) -> list[str]:
    right = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(headers.get(c, c) for c in df.columns) + " |",
             "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    for i, r in df.reset_index(drop=True).iterrows():
        cells = [_fmt(r[c], c) for c in df.columns]
        lines.append("| " + " | ".join(f"**{x}**" if i in bold else x for x in cells) + " |")
    return lines


def _recommendations(picks: dict, ref: str, labels: dict) -> list[str]:
    """The label-free recommendations: each one's test-chosen and nested figures, its folds and worst category."""
    q = selection.QUALITY
    out = ["### Recommendations: the variant chosen by a label-free rule", "",
           "`best`: the selection rule (dfr.selection) among every variant; `fast`: among those that score at "
           f"least {selection.FAST_SPEED:g}× as fast as {ref}. Test-chosen: the rule on every data set, reported on "
           "the same labels (optimistic). Nested: left out in turn, the rule chooses on the rest, and the chosen "
           "variant is reported on what was left out (the expected figure on unseen data).", "",
           "What the rule chose, and what it did not: the rule picks one of this study's variants without the test "
           "labels of the data set it is reported on. It does not choose the candidates, nor the settings they "
           "share (this config's base: backbone, image size, epochs, ...): whoever wrote the config did. Where "
           "those were set with earlier test results of these same data sets in view, the nested figure is "
           "optimistic by as much as they were tuned; the config's own comments say which were.", "",
           "| recommendation | figure | " + " | ".join(labels[m] for m in q) + " | chosen |", "|---|---|"
           + "---:|" * len(q) + "---|"]
    for name, p in picks.items():
        n = p["nested"]
        out.append(f"| {name} | test-chosen | " + " | ".join(_fmt(p["test_chosen"]["means"][m], m) for m in q)
                   + f" | {p['variant']} |")
        out.append(f"| {name} | nested (leave one {n['left_out']} out) | "
                   + " | ".join(_fmt(n["means"][m], m) for m in q) + " | "
                   + ", ".join(f"{f}: {v}" for f, v in n["chosen"].items()) + " |")
    for name, p in picks.items():
        if p["nested"]["worst"]:
            w = p["nested"]["worst"]
            out.append("")
            out.append(f"Worst category of `{name}` (nested) against {ref}: "
                       + "; ".join(f"{labels[m]} {w[m]['vs_reference']:+.3f} ({w[m]['dataset']}/{w[m]['category']})"
                                   for m in q if m in w) + ".")
    return out


def _member(m: dict) -> str:
    """An ensemble member as the tables show settings: its overrides, or the config itself."""
    return ", ".join(f"{k}: {_fmt(show(v), k)}" for k, v in m.items()) or "the config itself"


def ablations(man: dict) -> list[tuple[str, str, str]]:
    """(ensemble, variant, member) for every variant that is another variant's ensemble without one of its
    members, every other setting alike: what that member adds. (Without one of two members an ensemble is a
    single model, which the study names by other settings; those pairs are not found here.)"""
    vs = {v["name"]: v["settings"] for v in man["variants"]}
    out = []
    for full, s in vs.items():
        members = s.get("ensemble.members") or []
        if len(members) < 3:
            continue
        for name, t in vs.items():
            less = t.get("ensemble.members") or []
            if (len(less) == len(members) - 1 and all(m in members for m in less)
                    and all(t.get(k) == x for k, x in s.items() if k != "ensemble.members")):
                out.append((full, name, _member(next(m for m in members if m not in less))))
    return out


def _ablation_lines(summary: pd.DataFrame, pairs: list[tuple[str, str, str]], labels: dict) -> list[str]:
    """The study.md section on what each member adds, with a blank line before it; none without pairs."""
    if not pairs:
        return []
    q, by = selection.QUALITY, summary.set_index("variant")
    out = ["", "### What each member adds", "",
           "Each ensemble against the variant that lacks one of its members (all else alike): the member's gain "
           "in the means (the ensemble's minus the variant's; test labels, as every mean above) and the ensemble's "
           "score speed relative to the variant's (below 1: the member's cost).", "",
           "| ensemble | member | without it | " + " | ".join(f"{labels[m]} added" for m in q)
           + " | score speed with it |", "|---|---|---|" + "---:|" * (len(q) + 1)]
    for full, less, member in pairs:
        gain = " | ".join(_fmt_delta(by.at[full, m] - by.at[less, m]) for m in q)
        ratio = by.at[full, "score_rel"] / by.at[less, "score_rel"]
        out.append(f"| {full} | {member} | {less} | {gain} | {_fmt(ratio, 'score_rel')} |")
    return out


def _fmt_delta(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{x:+.3f}"


def compare(man: dict, out_csv: str | Path, out_md: str | Path, out_best: str | Path, plots_dir: str | Path,
            workdir: str | Path = ".", timing_csv: str | Path | None = None) -> pd.DataFrame:
    settings = list(man["variants"][0]["settings"])
    rows = collect(man, workdir)
    ref = reference_variant(man)
    summary = summarise(rows, settings, ref, timed_speeds(timing_csv) if timing_csv else None)
    picks = selection.recommend(rows, summary, ref)
    summary["front"] = selection.pareto(summary, selection.key_metric(rows))
    with atomic_path(out_csv, suffix=".csv") as tmp:
        rows.to_csv(tmp, index=False, float_format="%.6g")
    labels = {col: lab for col, (lab, _) in METRICS.items()}
    md = [f"### Study {man['study']}: {len(summary)} variants, means over {len(rows) // len(summary)} categories",
          "", f"Swept settings: {', '.join(settings) or '(none)'}; base config: "
          + ", ".join(f"{k}={_fmt(show(v), k)}" for k, v in man["base"].items()), ""]
    headers = {**labels, "latent_d": "mean d", "cae_params": "model params", **COST,
               "fit_rel": f"fit speed vs {ref}", "score_rel": f"score speed vs {ref}"}
    md += _md_table(summary.drop(columns="front"), headers,
                    bold={int(summary.index[summary.variant == picks["best"]["variant"]][0])})
    md += ["", f"Bold: the variant the selection rule chooses on every data set (`best`; the rule: dfr.selection). "
               "Its figures above are test-chosen: the labels that score it also chose it.",
           *([f"Score speed (timed): images per second of what dfr predict runs (f(x), every member's A(x), the "
              f"fusion, s(x)) on decoded images, timed warm in one process for every variant on the same images "
              f"(comparison/timing.csv names them, the machine and the threads), relative to {ref}: the speed that "
              "`fast` is chosen on. "] if timing_csv else []),
           f"Cost records: images per second from the jobs' benchmark records (wall time, each job's start-up "
           f"included), summed over categories, and relative to {ref}: fit = training images / (their features + "
           "PCA + training)" + (", score (jobs' wall) = test images / (their features + maps + an ensemble's "
                                "fusion)" if timing_csv else ", score = test images / (their features + maps + an "
                                "ensemble's fusion)") + "; an ensemble counts each of its members' jobs once; a "
           "job shared by several variants is counted for each; n/a where a record is missing.",
           "", *_recommendations(picks, ref, labels),
           "", "### Cost against quality", "",
           f"Every variant's means against its speeds relative to {ref}; on the front: no other variant is at least as "
           f"good in mean {labels[selection.key_metric(rows)]} and in score speed and better in one.", ""]
    front = summary[["variant", *selection.QUALITY, "fit_rel", "score_rel", "front"]].sort_values(
        "score_rel", ascending=False, na_position="last")
    md += _md_table(front.assign(front=front.front.map({True: "yes", False: ""})),
                    {**headers, "front": "on the front"})
    md += _ablation_lines(summary, ablations(man), labels)
    md += ["", "### Per category", ""]
    md += _md_table(rows.drop(columns=["latent_d", "cae_params", "fit_s", "score_s", "n_fit", "n_score"]), headers)
    write_text(out_md, "\n".join(md) + "\n")
    write_json(out_best, {"rule": selection.__doc__.split("\n\n")[1].replace("\n", " "), "reference": ref,
                          **picks})
    plots.study_figures(rows, summary, settings, man["base"], plots_dir, labels)
    return rows

