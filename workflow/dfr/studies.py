"""Studies: variants of one base config, run as one DAG, compared side by side (§8.2 of the specification).

A config's ``study`` lists variants as grids of dotted keys with value lists (each grid is a full product;
a list of grids is their union, e.g. one-at-a-time sweeps around the base config) and/or as named variants.
Each variant is the base config with its overrides, validated like any config; its name lists the settings
where it differs from the base (``base`` when it differs nowhere). A variant's results go to
``<results>/<experiment>/<variant>/``; everything its settings do not change is shared through the keyed
paths of :mod:`dfr.config` (feature cache, split, PCA, model and maps), so nothing is computed twice.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .io import DFRError, atomic_path, read_json, write_json, write_text

# Keys a variant may not change: what names and places the run, the data, and how fast it runs.
FIXED = {"experiment", "results", "datasets", "resources", "device", "study"}
RUNTIME_ONLY = {"features.batch_size", "features.num_workers", "features.channels_last", "features.amp",
                "cae.in_memory"}
COMPARISON = "comparison"  # the study's own folder beside its variants

# The comparison's metrics: column -> (label, how to read it from metrics.json)
METRICS = {
    "image_auroc": ("image AUROC", lambda m: m["image_auroc"]),
    "pixel_auroc": ("pixel AUROC", lambda m: (m.get("pixel") or {}).get("auroc", np.nan)),
    "au_pro": ("AU-PRO", lambda m: (m.get("pixel") or {}).get("au_pro", np.nan)),
    "f1_oracle": ("F1 at t* (oracle)", lambda m: m["thresholds"]["f1_optimal"]["f1"]),
    "f1_mean_std": ("F1 at μ+ασ (val)", lambda m: m["thresholds"].get("val_mean_std", {}).get("f1", np.nan)),
    "f1_percentile": ("F1 at percentile (val)",
                      lambda m: m["thresholds"].get("val_percentile", {}).get("f1", np.nan)),
}


def get(cfg: dict, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def set_key(cfg: dict, key: str, value: Any, where: str) -> None:
    """cfg[a][b][c] = value for the dotted key a.b.c (sections created as needed)."""
    node = cfg
    *parents, leaf = key.split(".")
    for i, p in enumerate(parents):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise DFRError(f"{where}: {key}: {'.'.join(parents[:i + 1])} is not a section of the config")
    node[leaf] = copy.deepcopy(value)


def _flatten(overrides: dict, prefix: str = "") -> dict:
    """{'cae': {'latent_dim': 8}} and {'cae.latent_dim': 8} alike -> {'cae.latent_dim': 8}."""
    out = {}
    for k, v in overrides.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key.split(".")[0] != "datasets":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check_key(key: str, where: str) -> None:
    top = key.split(".")[0]
    if top in FIXED:
        raise DFRError(f"{where}: {key}: a study cannot vary '{top}' (the variants share it)")
    if key in RUNTIME_ONLY:
        raise DFRError(f"{where}: {key} changes only how fast artifacts are made, not what they are; "
                       "vary it across runs, not as a study variant")


def slug(value: Any) -> str:
    """A value as a path-safe name part: layer2[-1] -> layer2-1, [a, b] -> a+b, True -> true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "+".join(slug(v) for v in value) or "none"
    if isinstance(value, dict):  # e.g. an ensemble member: its overrides; {} is the config itself
        return "-".join(f"{slug(k)}-{slug(v)}" for k, v in _flatten(value).items()) or "base"
    if isinstance(value, float):
        value = f"{value:g}"
    s = re.sub(r"[\[\]]", "", str(value))
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", s).strip("-") or "x"


def _labels(keys: list[str]) -> dict[str, str]:
    """Each dotted key's shortest suffix that no other key ends with: cae.latent_dim -> latent_dim; but
    cae.normalize and data.normalize stay whole."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            label = ".".join(parts[-n:])
            if not any(o != k and (o == label or o.endswith("." + label)) for o in keys):
                break
        out[k] = label
    return out


def _grids(study: dict) -> list[dict]:
    g = study.get("grid") or []
    return [g] if isinstance(g, dict) else list(g)


def variants(cfg: dict, source: str = "config") -> dict[str, dict]:
    """Experiment name -> validated config: the config itself without a study, else one per variant
    (experiment ``<experiment>/<variant>``)."""
    from . import config as dfr_config

    study = cfg.get("study")
    if not study:
        return {cfg["experiment"]: cfg}
    base = {k: v for k, v in cfg.items() if k != "study"}
    where = f"{source}: study"
    points: list[tuple[str | None, dict]] = []
    for grid in _grids(study):
        flat = _flatten(grid)
        for k, vals in flat.items():
            _check_key(k, f"{where}.grid")
            if not isinstance(vals, list) or not vals:
                raise DFRError(f"{where}.grid: {k}: give a list of values (got {vals!r})")
        for combo in itertools.product(*flat.values()):
            points.append((None, dict(zip(flat, combo))))
    for name, over in (study.get("variants") or {}).items():
        flat = _flatten(over or {})
        for k in flat:
            _check_key(k, f"{where}.variants.{name}")
        points.append((name, flat))
    if not points:
        raise DFRError(f"{where}: lists no variants (give study.grid or study.variants)")

    built: list[tuple[str | None, dict, str]] = []
    for name, over in points:
        raw = copy.deepcopy(base)
        label = f"variants.{name}" if name else "grid " + ", ".join(f"{k}={v!r}" for k, v in over.items())
        for k, v in over.items():
            set_key(raw, k, v, f"{where} ({label})")
        vcfg = dfr_config.validate(raw, f"{where} ({label})")
        built.append((name, vcfg, label))
    # the settings that differ anywhere in the study name the variants
    swept = [k for k in dict.fromkeys(k for _, over in points for k in over)
             if len({json.dumps(_get_or_none(v, k), sort_keys=True) for _, v, _ in built}) > 1]
    labels = _labels(swept)
    out: dict[str, dict] = {}
    for name, vcfg, label in built:
        if name is None:
            parts = [f"{labels[k]}-{slug(get(vcfg, k))}" for k in swept if get(vcfg, k) != _get_or_none(base, k)]
            name = "__".join(parts) or "base"
        if name == COMPARISON:
            raise DFRError(f"{where}: '{COMPARISON}' is reserved for the study's comparison; rename the variant")
        exp = f"{cfg['experiment']}/{name}"
        vcfg["experiment"] = exp
        vcfg["study_variant"] = {"study": cfg["experiment"], "name": name,
                                 "settings": {k: get(vcfg, k) for k in swept}}
        if exp in out and out[exp] != vcfg:
            raise DFRError(f"{where}: two variants are named '{name}' but differ ({label}); rename one")
        out[exp] = vcfg
    return out


def _get_or_none(cfg: dict, key: str) -> Any:
    try:
        return get(cfg, key)
    except KeyError:
        return None


def swept_settings(vcfgs: dict[str, dict]) -> list[str]:
    first = next(iter(vcfgs.values()))
    return list(first.get("study_variant", {}).get("settings", {}))


def manifest(cfg: dict, vcfgs: dict[str, dict]) -> dict:
    """What the comparison needs to know of each variant (small: names, settings, keys)."""
    from . import config as dfr_config
    from . import ensemble

    base = {k: _show(_get_or_none(cfg, k)) for k in swept_settings(vcfgs)}
    def models(v: dict) -> list[dict]:  # what a variant trains: its model, or its ensemble's members
        return [{"fkey": dfr_config.feature_key(m), "mkey": dfr_config.model_key(m),
                 "pkey": dfr_config.pca_key(m) if dfr_config.uses_pca(m) else ""}
                for m in ensemble.members(v) or [v]]

    return {"study": cfg["experiment"], "results": cfg["results"], "base": base,
            # a list: the variants' order in the study (a JSON object's keys would be sorted by the rule's params)
            "variants": [{"name": v["study_variant"]["name"], "experiment": e,
                          "settings": v["study_variant"]["settings"], "mkey": dfr_config.model_key(v),
                          "models": models(v), "ekey": ensemble.key(v)}
                         for e, v in vcfgs.items()],
            "datasets": {d: ds["categories"] for d, ds in cfg["datasets"].items()}}


def comparison_paths(results: str, study: str) -> dict[str, str]:
    c = f"{results.rstrip('/')}/{study}/{COMPARISON}"
    return {"csv": f"{c}/study.csv", "md": f"{c}/study.md", "best": f"{c}/best.json", "plots": f"{c}/plots"}


# ---- the comparison: a table of every variant x category, plots against each setting, the cost ----

def _bench_seconds(path: Path) -> float:
    if not path.is_file():
        return np.nan
    b = pd.read_csv(path, sep="\t")
    return float(b["s"].iloc[-1]) if len(b) else np.nan


@functools.lru_cache(maxsize=None)  # variants that share a model (top-k, thresholds) read it once
def _model_size(path: Path) -> tuple[float, float]:
    """(latent d, trainable parameters) of a model.pt."""
    if not path.is_file():
        return np.nan, np.nan
    from . import cae

    model = cae.load(path)
    if getattr(model, "kind", "cae") == "gaussian":  # no trained weights: count what it stores
        return 0.0, float(model.mean.numel() + model.precision.numel())
    return float(model.latent_dim), float(sum(p.numel() for p in model.parameters()))


def collect(man: dict, workdir: str | Path = ".") -> pd.DataFrame:
    """One row per variant x dataset x category: the settings, the metrics and the cost.

    Cost, from the jobs' benchmark records: ``fit_s`` the seconds to fit the model (features of the training
    images, PCA, training), ``score_s`` to score (features of the test images, maps, the ensemble's fusion),
    summed over an ensemble's members; a job shared by several variants is counted for each."""
    from . import config as dfr_config

    wd = Path(workdir)
    pat, rows = dfr_config.patterns(man["results"]), []

    def record(rule: str, values: dict) -> str:
        return dfr_config.benchmark_path(dfr_config._fill(dfr_config.LOG_PATTERNS[rule], values))

    for v in man["variants"]:
        name = v["name"]
        for d, cats in man["datasets"].items():
            for c in cats:
                values = {"experiment": v["experiment"], "mkey": v["mkey"], "dataset": d, "category": c}
                m = read_json(wd / dfr_config._fill(pat["metrics"], values))
                sizes, fit_jobs, score_jobs = [], {}, {}  # records by path: members sharing a job count it once
                for mod in v["models"]:
                    mv = {**values, **mod}
                    sizes.append(_model_size(wd / dfr_config._fill(pat["model"], mv)))
                    jobs = [record("features", {**mv, "split": "train"}), record("train", mv)]
                    fit_jobs |= dict.fromkeys(jobs + ([record("pca", mv)] if mod["pkey"] else []))
                    score_jobs |= dict.fromkeys([record("features", {**mv, "split": "test"}), record("maps", mv)])
                if v["ekey"]:
                    score_jobs[record("ensemble", {**values, "ekey": v["ekey"]})] = None
                fit = [_bench_seconds(wd / r) for r in fit_jobs]
                score = [_bench_seconds(wd / r) for r in score_jobs]
                n_fit, n_score = _images(wd / dfr_config._fill(pat["index"], values))
                rows.append({"variant": name, **{k: _show(x) for k, x in v["settings"].items()},
                             "dataset": d, "category": c,
                             **{col: float(f(m)) for col, (_, f) in METRICS.items()},
                             "latent_d": float(np.mean([s[0] for s in sizes])),
                             "cae_params": float(np.sum([s[1] for s in sizes])),
                             "fit_s": float(np.sum(fit)), "score_s": float(np.sum(score)),
                             "n_fit": n_fit, "n_score": n_score})
    return pd.DataFrame(rows)


def _images(index_csv: Path) -> tuple[float, float]:
    """(training images, test images) of a category from its index; NaN when it is not there."""
    if not index_csv.is_file():
        return np.nan, np.nan
    split = pd.read_csv(index_csv, usecols=["split"]).split
    return float((split == "train").sum()), float((split == "test").sum())


def _show(v: Any) -> Any:
    return slug(v) if isinstance(v, (list, tuple, dict)) else v


COST = {"fit_ips": "fit img/s", "score_ips": "score img/s", "fit_rel": "fit speed", "score_rel": "score speed"}


def _strict_sum(x: pd.Series) -> float:
    return float(x.sum()) if x.notna().all() else np.nan  # a missing record makes the total unknown


def summarise(rows: pd.DataFrame, settings: list[str], reference: str | None = None) -> pd.DataFrame:
    """One row per variant: the means over every category (all datasets) of each metric, and the cost as
    images per second (fit: training images; score: test images) and relative to ``reference``'s speed."""
    agg = {col: "mean" for col in METRICS} | {"latent_d": "mean", "cae_params": "mean"}
    agg |= {k: _strict_sum for k in ("fit_s", "score_s", "n_fit", "n_score")}
    out = rows.groupby("variant", sort=False).agg(agg).reset_index()
    first = rows.drop_duplicates("variant").set_index("variant")
    for k in reversed(settings):
        out.insert(1, k, out.variant.map(first[k]))
    with np.errstate(divide="ignore", invalid="ignore"):
        out["fit_ips"] = out.n_fit / out.fit_s.where(out.fit_s > 0)
        out["score_ips"] = out.n_score / out.score_s.where(out.score_s > 0)
    ref = out[out.variant == (reference or out.variant.iloc[0])].iloc[0]
    out["fit_rel"] = out.fit_ips / ref.fit_ips
    out["score_rel"] = out.score_ips / ref.score_ips
    return out.drop(columns=["fit_s", "score_s", "n_fit", "n_score"])


def reference_variant(man: dict) -> str:
    """The variant the costs are relative to: the one that is the base config, else the first."""
    for v in man["variants"]:
        if all(_show(v["settings"].get(k)) == b for k, b in man["base"].items()):
            return v["name"]
    return man["variants"][0]["name"]


def best_variant(summary: pd.DataFrame) -> dict:
    i = summary.image_auroc.idxmax()
    return {"variant": summary.variant[i], "image_auroc": float(summary.image_auroc[i]),
            "chosen_on": "test labels (mean image AUROC over categories): an optimistic pick, not a held-out "
                         "estimate; confirm it on other data before adopting it"}


def _fmt(v: Any, col: str) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    if col in ("fit_ips", "score_ips"):
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


def compare(man: dict, out_csv: str | Path, out_md: str | Path, out_best: str | Path, plots_dir: str | Path,
            workdir: str | Path = ".") -> pd.DataFrame:
    settings = list(man["variants"][0]["settings"])
    rows = collect(man, workdir)
    ref = reference_variant(man)
    summary = summarise(rows, settings, ref)
    best = best_variant(summary)
    with atomic_path(out_csv, suffix=".csv") as tmp:
        rows.to_csv(tmp, index=False, float_format="%.6g")
    labels = {col: lab for col, (lab, _) in METRICS.items()}
    md = [f"### Study {man['study']}: {len(summary)} variants, means over {len(rows) // len(summary)} categories",
          "", f"Swept settings: {', '.join(settings) or '(none)'}; base config: "
          + ", ".join(f"{k}={_fmt(_show(v), k)}" for k, v in man["base"].items()), ""]
    headers = {**labels, "latent_d": "mean d", "cae_params": "model params", **COST,
               "fit_rel": f"fit speed vs {ref}", "score_rel": f"score speed vs {ref}"}
    md += _md_table(summary, headers, bold={int(summary.index[summary.variant == best["variant"]][0])})
    md += ["", f"Best by mean image AUROC: **{best['variant']}** ({best['image_auroc']:.3f}), chosen on the "
               "test labels: an optimistic pick, not a held-out estimate.",
           f"Cost: images per second from the jobs' benchmark records (wall time), summed over categories, and "
           f"relative to {ref}: fit = training images / (their features + PCA + training), score = test images / "
           "(their features + maps + an ensemble's fusion); an ensemble counts each of its members' jobs once; a "
           "job shared by several variants is counted for each (Snakemake's records include each job's start-up, "
           "python -m dfr.run's do not); n/a where a record is missing.",
           "",
           "### Per category", ""]
    md += _md_table(rows.drop(columns=["latent_d", "cae_params", "fit_s", "score_s", "n_fit", "n_score"]), headers)
    write_text(out_md, "\n".join(md) + "\n")
    write_json(out_best, best)
    from . import plots

    plots.study_figures(rows, summary, settings, man["base"], plots_dir, labels)
    return rows

