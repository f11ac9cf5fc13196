"""The plan of what to compute: experiments × study variants × ensemble members, expanded once.

The last module of the planning layer (overrides → config → keys → layout → workload → plan). The Snakefile builds one
:class:`Plan` from its config; every rule's input functions, the targets and a study's comparison read it.

* A **study** (``study`` in the config) lists variants as grids of dotted keys with value lists (each grid
  a full product; a list of grids their union) and/or as named variants. Each variant is the base config
  with its overrides, validated like any config, named by the settings where it differs from the base
  (``base`` where it differs nowhere); its results go to ``<results>/<experiment>/<variant>/``.
* An **ensemble** (``ensemble.members``) is a list of dotted overrides of the model and its features; each
  member is a config of its own, with its own keyed artifacts, shared with any experiment that makes the same.

What a variant or member does not change is shared through the keyed paths of :mod:`dfr.layout`.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path
from typing import Any

from dfr.planning import config as dfr_config
from dfr.planning import keys, layout, overrides, workload
from dfr import shapes
from dfr.io import DFRError

KINDS = ("fkey", "skey", "pkey", "mkey", "ekey")  # the wildcards of the shared artifacts


# ---- ensemble members ----

_MEMBERS: dict[str, list[dict]] = {}  # config (as JSON) -> its members: input functions ask for them often


def members(cfg: dict, source: str = "config") -> list[dict]:
    """The validated config of each member of ``cfg``'s ensemble; [] when it is a single model."""
    listed = (cfg.get("ensemble") or {}).get("members") or []
    if not listed:
        return []
    memo = json.dumps(cfg, sort_keys=True, default=str)
    if memo not in _MEMBERS:
        _MEMBERS[memo] = _members(cfg, listed, source)
    return _MEMBERS[memo]


def _members(cfg: dict, listed: list, source: str) -> list[dict]:
    where = f"{source}: ensemble.members"
    if len(listed) < 2:
        raise DFRError(f"{where}: an ensemble needs at least two members (leave the list empty for one model)")
    base = {k: v for k, v in cfg.items() if k not in ("ensemble", "study", "study_variant")}
    base["experiment"] = cfg["experiment"].split("/")[0]  # a study variant's is <study>/<variant>; unused
    out, seen = [], {}
    for i, over in enumerate(listed):
        raw = copy.deepcopy(base)
        for key, value in overrides.flatten(over or {}).items():
            overrides.check_member_key(key, f"{where}[{i}]")
            overrides.set_key(raw, key, value, f"{where}[{i}]")
        m = dfr_config.validate(raw, f"{where}[{i}]")
        k = keys.model_key(m)
        if k in seen:
            raise DFRError(f"{where}: members {seen[k]} and {i} make the same model ({k}); give them different "
                           f"settings (of their head, {m['model']}.*, or of their features)")
        seen[k] = i
        out.append(m)
    return out


# ---- study variants ----

def slug(value: Any) -> str:
    """A value as a path-safe name part: layer2[-1] -> layer2-1, [a, b] -> a+b, True -> true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return "+".join(slug(v) for v in value) or "none"
    if isinstance(value, dict):  # e.g. an ensemble member: its overrides; {} is the config itself
        return "-".join(f"{slug(k)}-{slug(v)}" for k, v in overrides.flatten(value).items()) or "base"
    if isinstance(value, float):
        value = f"{value:g}"
    s = re.sub(r"[\[\]]", "", str(value))
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", s).strip("-") or "x"


def show(v: Any) -> Any:
    """A setting as the comparison shows it: lists and mappings as their slug."""
    return slug(v) if isinstance(v, (list, tuple, dict)) else v


def _labels(names: list[str]) -> dict[str, str]:
    """Each dotted key's shortest suffix that no other key ends with: cae.latent_dim -> latent_dim; but
    cae.normalize and data.normalize stay whole."""
    out = {}
    for k in names:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            label = ".".join(parts[-n:])
            if not any(o != k and (o == label or o.endswith("." + label)) for o in names):
                break
        out[k] = label
    return out


def _grids(study: dict) -> list[dict]:
    g = study.get("grid") or []
    return [g] if isinstance(g, dict) else list(g)


def variants(cfg: dict, source: str = "config") -> dict[str, dict]:
    """Experiment name -> validated config: the config itself without a study, else one per variant
    (experiment ``<experiment>/<variant>``)."""
    study = cfg.get("study")
    if not study:
        return {cfg["experiment"]: cfg}
    base = {k: v for k, v in cfg.items() if k != "study"}
    where = f"{source}: study"
    points: list[tuple[str | None, dict]] = []
    for grid in _grids(study):
        flat = overrides.flatten(grid)
        for k, vals in flat.items():
            overrides.check_variant_key(k, f"{where}.grid")
            if not isinstance(vals, list) or not vals:
                raise DFRError(f"{where}.grid: {k}: give a list of values (got {vals!r})")
        for combo in itertools.product(*flat.values()):
            points.append((None, dict(zip(flat, combo))))
    for name, over in (study.get("variants") or {}).items():
        flat = overrides.flatten(over or {})
        for k in flat:
            overrides.check_variant_key(k, f"{where}.variants.{name}")
        points.append((name, flat))
    if not points:
        raise DFRError(f"{where}: lists no variants (give study.grid or study.variants)")

    built: list[tuple[str | None, dict, str]] = []
    for name, over in points:
        raw = copy.deepcopy(base)
        label = f"variants.{name}" if name else "grid " + ", ".join(f"{k}={v!r}" for k, v in over.items())
        for k, v in over.items():
            overrides.set_key(raw, k, v, f"{where} ({label})")
        built.append((name, dfr_config.validate(raw, f"{where} ({label})"), label))
    # the settings that differ anywhere in the study name the variants
    swept = [k for k in dict.fromkeys(k for _, over in points for k in over)
             if len({json.dumps(overrides.get_or_none(v, k), sort_keys=True) for _, v, _ in built}) > 1]
    labels = _labels(swept)
    out: dict[str, dict] = {}
    for name, vcfg, label in built:
        if name is None:
            parts = [f"{labels[k]}-{slug(overrides.get(vcfg, k))}" for k in swept
                     if overrides.get(vcfg, k) != overrides.get_or_none(base, k)]
            name = "__".join(parts) or "base"
        if name == layout.COMPARISON:
            raise DFRError(f"{where}: '{layout.COMPARISON}' is reserved for the study's comparison; rename the "
                           "variant")
        exp = f"{cfg['experiment']}/{name}"
        vcfg["experiment"] = exp
        vcfg["study_variant"] = {"study": cfg["experiment"], "name": name,
                                 "settings": {k: overrides.get(vcfg, k) for k in swept}}
        if exp in out and out[exp] != vcfg:
            raise DFRError(f"{where}: two variants are named '{name}' but differ ({label}); rename one")
        out[exp] = vcfg
    return out


# ---- one config's keys and paths ----

def n_fit(cfg: dict, dataset: str | None, category: str | None) -> int | None:
    """The images a category's model is fitted on (whether PCA subsamples depends on it); None if unknown."""
    return workload.n_fit_images(cfg, dataset, category) if dataset and category else None


_KEYS: dict[tuple, dict] = {}  # (config as JSON, dataset, category) -> its keys: input functions ask often


def key_values(cfg: dict, dataset: str | None = None, category: str | None = None) -> dict[str, str]:
    """The wildcard values of a config's shared artifacts (fkey, skey, pkey, mkey, ekey) for one category
    (PCA's key, and so the model's, depends on the category's image count) and its experiment."""
    memo = (json.dumps(cfg, sort_keys=True, default=str), dataset, category)
    if memo not in _KEYS:
        _KEYS[memo] = _key_values(cfg, dataset, category)
    return dict(_KEYS[memo])


def _key_values(cfg: dict, dataset: str | None, category: str | None) -> dict[str, str]:
    n = n_fit(cfg, dataset, category)
    return {"fkey": keys.feature_key(cfg), "skey": keys.split_key(cfg), "pkey": keys.pca_key(cfg, n),
            "mkey": keys.model_key(cfg, n), "ekey": keys.ensemble_key(members(cfg), n),
            "experiment": cfg["experiment"]}


def pca_params(cfg: dict, dataset: str, category: str) -> dict:
    return keys.pca_params(cfg, n_fit(cfg, dataset, category))


def fusion_params(cfg: dict, dataset: str, category: str) -> dict:
    return keys.fusion_params(members(cfg), n_fit(cfg, dataset, category))


def paths(cfg: dict, dataset: str, category: str) -> dict[str, str]:
    """Every artifact path of one category under this config. An ensemble's experiment scores the fused maps;
    the model, history and sidecar it shows are its first member's."""
    values = {**key_values(cfg, dataset, category), "dataset": dataset, "category": category}
    out = {k: layout.fill(v, values) for k, v in layout.patterns(cfg["results"]).items()}
    ms = members(cfg)
    if ms:
        first = paths(ms[0], dataset, category)
        out.update(maps=out["ensemble_maps"], model=first["model"], history=first["history"],
                   model_info=first["model_info"])
    else:
        del out["ensemble_maps"]
    return out


def log_paths(cfg: dict, dataset: str, category: str = "", split: str = "") -> dict[str, str]:
    """Each rule's log for one job of this config (its benchmark record: :func:`dfr.layout.benchmark_path`)."""
    values = {**key_values(cfg, dataset or None, category or None), "dataset": dataset, "category": category,
              "split": split}
    return {k: layout.fill(v, values) for k, v in layout.log_patterns(cfg["results"]).items()}


def model_jobs(cfg: dict, dataset: str, category: str) -> list[dict]:
    """What a config trains for a category: its model, or each of its ensemble's members' (their keys)."""
    out = []
    for m in members(cfg) or [cfg]:
        k = key_values(m, dataset, category)
        out.append({"fkey": k["fkey"], "skey": k["skey"], "mkey": k["mkey"],
                    "pkey": k["pkey"] if keys.uses_pca(m) else ""})
    return out


def timing_entry(cfg: dict, dataset: str, category: str) -> dict:
    """What the study's timing runs of a config on a category: its members' models (or its model), an
    ensemble's fused maps (their statistics and grid), how f(x) is made for each, top-k, border, the index."""
    p, ms = paths(cfg, dataset, category), members(cfg) or [cfg]
    return {"dataset": dataset, "category": category, "index": p["index"],
            "models": [paths(m, dataset, category)["model"] for m in ms],
            "maps": p["maps"] if members(cfg) else None, "features": [keys.feature_params(m) for m in ms],
            "top_k": cfg["scoring"]["top_k"], "border": cfg["scoring"]["border"]}


def cost_records(cfg: dict, dataset: str, category: str) -> dict[str, list[str]]:
    """The benchmark records that a config's fit and scoring cost are read from: ``fit`` (features of the
    training images, PCA, training) and ``score`` (features of the test images, maps, the ensemble's fusion);
    a job that members share is listed once."""
    fit, score = {}, {}
    base = {"dataset": dataset, "category": category}
    r = cfg["results"]
    for mod in model_jobs(cfg, dataset, category):
        mv = {**base, **mod}
        fit |= dict.fromkeys([layout.record(r, "features", {**mv, "split": "train"}), layout.record(r, "train", mv)]
                             + ([layout.record(r, "pca", mv)] if mod["pkey"] else []))
        score |= dict.fromkeys([layout.record(r, "features", {**mv, "split": "test"}),
                                layout.record(r, "maps", mv)])
    ekey = key_values(cfg, dataset, category)["ekey"]
    if ekey:
        score[layout.record(r, "ensemble", {**base, "ekey": ekey})] = None
    return {"fit": list(fit), "score": list(score)}


# ---- the plan of one run ----

def check(cfg: dict, source: str = "config") -> None:
    """What can be known before any job runs: top-k and the border against the size of A(x) (the finest
    member's for an ensemble). Absent data folders are said, not refused (:func:`missing_folders`)."""
    where = f"{source}" + (f" ({cfg['study_variant']['name']})" if cfg.get("study_variant") else "")
    models = members(cfg) or [cfg]
    sides = [keys.grid_side(m) for m in models]
    if all(sides):
        finest = max(range(len(models)), key=sides.__getitem__)
        side, m = sides[finest], models[finest]
        border, k = cfg["scoring"]["border"], cfg["scoring"]["top_k"]
        layer = (m["features"]["layers"] or shapes.DEFAULT_LAYERS.get(m["features"]["backbone"], ["?"]))[0]
        grid = (f"A(x) is {side}x{side} at data.image_size {m['data']['image_size']} "
                f"({m['features']['backbone']}, {layer})")
        if 2 * border >= side:
            raise DFRError(f"{where}: scoring.border: {border} leaves nothing of the map: {grid}; choose at most "
                           f"{(side - 1) // 2}")
        cells = (side - 2 * border) ** 2
        if k > cells:
            raise DFRError(f"{where}: scoring.top_k: {k} is more than the {cells} cells of the map: {grid}"
                           + (f", without a border of {border}" if border else "") + f"; choose at most {cells}")


def missing_folders(cfg: dict, source: str = "config") -> list[str]:
    """One line per folder dataset whose category folders are absent. Not an error of the plan: a run that
    needs them fails in their index jobs, which name them, and the other data sets go on (a data config
    combined with a method preset may name data this machine lacks)."""
    out = []
    for name, ds in cfg["datasets"].items():
        if ds["kind"] == "folder":
            root = Path(layout.dataset_root(cfg, name))
            absent = [c for c in ds["categories"] if not (root / c).is_dir()]
            if absent:
                out.append(f"{source}: datasets.{name}: no folder {', '.join(str(root / c) for c in absent)} "
                           f"(datasets.{name}.root is {ds['root']!r}; a category is a folder with train/ and "
                           "test/, or MVTec AD 2's train/, validation/ and test_public/): the jobs that need them "
                           "will fail")
    return out


class Plan:
    """A config's experiments (one, or a study's variants), their members, and every shared key's config."""

    def __init__(self, cfg: dict, source: str = "config"):
        self.config = cfg
        self.study = bool(cfg.get("study"))
        self.experiments = variants(cfg, source)
        self.members = {e: members(c, source) for e, c in self.experiments.items()}
        for c in self.experiments.values():
            check(c, source)
        # the configs behind each key of a shared artifact: the variants that agree on what shapes an artifact
        # have the same key, so it is made once and shared; an ensemble's members are configs of their own
        self.by_key: dict[str, dict[str, dict]] = {k: {} for k in KINDS}
        for c in self.experiments.values():
            for m in [c, *members(c)]:
                for d, cat in self.categories():
                    for k, v in key_values(m, d, cat).items():
                        if k in self.by_key and v:
                            self.by_key[k].setdefault(v, m)

    def cfg_of(self, wildcards) -> dict:
        """The config that a job's wildcards name: by experiment, else by the key of its shared artifact."""
        if wildcards.get("experiment"):
            return self.experiments[wildcards.get("experiment")]
        for k in ("ekey", "mkey", "pkey", "fkey", "skey"):
            if wildcards.get(k):
                return self.by_key[k][wildcards.get(k)]
        return self.config

    def categories(self) -> list[tuple[str, str]]:
        return [(d, c) for d, ds in self.config["datasets"].items() for c in ds["categories"]]

    def targets(self) -> list[str]:
        """Every table and figure; the model bundles of a run that is not a study (a study compares, the
        bundles to deploy come from a run of the chosen variant), an ensemble's as a single model's."""
        out = []
        for c in self.experiments.values():
            for d in self.config["datasets"]:
                t = layout.table_paths(c, d)
                out += [t["csv"], t["md"]]
                if not self.study and self.has_private(d):  # MVTec AD 2's leaderboard archive
                    out.append(layout.fill(layout.submission_pattern(c["results"]),
                                           {"experiment": c["experiment"], "dataset": d}))
            for d, cat in self.categories():
                p = paths(c, d, cat)
                out += [p["plots"]] if self.study else [p["plots"], p["bundle"]]
        if self.study:
            out += list(self.comparison_paths().values())
        return out

    def has_private(self, dataset: str) -> bool:
        """Whether a dataset has MVTec AD 2's private test sets to submit: kind mvtec_ad2, or a synthetic one
        written in its layout."""
        ds = self.config["datasets"][dataset]
        return ds["kind"] == "mvtec_ad2" or ds.get("synthetic", {}).get("layout") == "mvtec_ad2"

    def timed_categories(self) -> list[tuple[str, str]]:
        """Where a study's speeds are timed: each dataset's first category (a variant's cost per image depends
        on its settings, not on the category; decoding, timed apart, on the images' size)."""
        return [(d, ds["categories"][0]) for d, ds in self.config["datasets"].items() if ds["categories"]]

    def timing_inputs(self) -> dict[str, list[str]]:
        """What the study's timing reads: every variant's models and fused maps, the timed categories' indexes."""
        out: dict[str, dict] = {"models": {}, "maps": {}, "index": {}}
        for v in self.manifest()["variants"]:
            for t in v["timing"]:
                out["models"] |= dict.fromkeys(t["models"])
                out["index"][t["index"]] = None
                if t["maps"]:
                    out["maps"][t["maps"]] = None
        return {k: list(v) for k, v in out.items()}

    def comparison_paths(self) -> dict[str, str]:
        return layout.comparison_paths(self.config["results"], self.config["experiment"])

    def comparison_inputs(self) -> dict[str, list[str]]:
        """What the study's comparison reads, each declared: the files its manifest lists (every variant's
        metrics and model sidecars, the categories' indexes, the benchmark records its costs come from)."""
        out: dict[str, dict] = {"metrics": {}, "model_info": {}, "index": {}, "records": {}}
        for v in self.manifest()["variants"]:
            for c in v["categories"]:
                out["metrics"][c["metrics"]] = out["index"][c["index"]] = None
                out["model_info"] |= dict.fromkeys(c["model_info"])
                out["records"] |= dict.fromkeys(c["fit"] + c["score"])
        return {k: list(v) for k, v in out.items()}

    def manifest(self) -> dict:
        """What the comparison needs to know of each variant (small: names, settings, paths of its inputs);
        made once per plan (the study's manifest, comparison and timing all read it)."""
        if getattr(self, "_manifest", None) is None:
            self._manifest = self._make_manifest()
        return self._manifest

    def _make_manifest(self) -> dict:
        cfg = self.config
        first = next(iter(self.experiments.values()))
        swept = list(first.get("study_variant", {}).get("settings", {}))
        rows = []
        for e, v in self.experiments.items():
            cats = []
            for d, cat in self.categories():
                p = paths(v, d, cat)
                cats.append({"dataset": d, "category": cat, "metrics": p["metrics"], "index": p["index"],
                             "model_info": [paths(m, d, cat)["model_info"] for m in members(v) or [v]],
                             **cost_records(v, d, cat)})
            rows.append({"name": v["study_variant"]["name"], "experiment": e,
                         "settings": v["study_variant"]["settings"], "categories": cats,
                         "timing": [timing_entry(v, d, cat) for d, cat in self.timed_categories()]})
        # a list: the variants' order in the study (a JSON object's keys would be sorted by the rule's params)
        return {"study": cfg["experiment"], "base": {k: show(overrides.get_or_none(cfg, k)) for k in swept},
                "variants": rows}
