"""Configuration: defaults, schema validation with readable messages, and the params of each stage.

The Snakefile calls :func:`load`; each rule's ``params`` come from the ``*_params`` functions here, so
that exactly the settings that shape an artifact are recorded (and trigger its rerun) and nothing else.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from . import shapes
from .features import feature_params_key
from .io import DFRError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"

MVTEC_CATEGORIES = list(shapes.MVTEC_AD)
VISA_CATEGORIES = list(shapes.VISA)


def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _fill_defaults(cfg: Any, sch: dict) -> Any:
    if sch.get("type") == "object" and isinstance(cfg, dict):
        for key, sub in sch.get("properties", {}).items():
            if key not in cfg and "default" in sub:
                cfg[key] = copy.deepcopy(sub["default"])
            if key in cfg:
                cfg[key] = _fill_defaults(cfg[key], sub)
        extra = sch.get("additionalProperties")
        if isinstance(extra, dict):
            for key in cfg:
                if key not in sch.get("properties", {}):
                    cfg[key] = _fill_defaults(cfg[key], extra)
    return cfg


def validate(cfg: dict, source: str = "config") -> dict:
    """Fill defaults and validate; raise :class:`DFRError` listing every problem with its key path."""
    sch = schema()
    cfg = _fill_defaults(copy.deepcopy(cfg), sch)
    try:
        import jsonschema
    except ImportError:  # e.g. a GPU box with only PyTorch: defaults filled, schema not checked
        import warnings

        warnings.warn("jsonschema is not installed: the configuration is not validated", stacklevel=2)
        errors = []
    else:
        validator = jsonschema.Draft202012Validator(sch)
        errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors:
            where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
            lines.append(f"  {where}: {e.message}")
        raise DFRError(f"{source}: invalid configuration\n" + "\n".join(lines))
    if cfg["experiment"] in RESERVED_EXPERIMENTS:
        raise DFRError(f"{source}: experiment: '{cfg['experiment']}' names a shared folder under results/ "
                       f"({', '.join(sorted(RESERVED_EXPERIMENTS))}); choose another name")
    for name, ds in cfg["datasets"].items():
        if ds["kind"] == "synthetic":
            from .synthetic import CATEGORIES

            shape = ds["synthetic"].get("shape")
            known = list(shapes.BENCHMARKS[shape]) if shape else sorted(CATEGORIES)
            unknown = [c for c in ds["categories"] if c not in known]
            if unknown:
                raise DFRError(f"{source}: datasets.{name}.categories: unknown synthetic categories {unknown}; "
                               f"choose from {known}" + (f" (synthetic.shape: {shape})" if shape else ""))
        known = {"mvtec": MVTEC_CATEGORIES, "visa": VISA_CATEGORIES}.get(ds["kind"])
        if known:
            unknown = [c for c in ds["categories"] if c not in known]
            if unknown:
                raise DFRError(f"{source}: datasets.{name}.categories: {unknown} not in {ds['kind']} "
                               f"(its categories: {', '.join(known)})")
    from . import ensemble

    ensemble.members(cfg, source)  # each member is validated as a config of its own
    return cfg


def load(path: str | Path) -> dict:
    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise DFRError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise DFRError(f"{path}: not valid YAML ({e})") from None
    return validate(cfg, str(path))


# ---- the params of each stage: exactly what shapes its artifact ----

def feature_params(cfg: dict) -> dict:
    f = cfg["features"]
    from . import backbones

    layers = f["layers"] or backbones.DEFAULT_LAYERS.get(f["backbone"], [])
    out = {"backbone": f["backbone"], "weights": str(f["weights"]), "layers": list(layers),
           "pool": f["pool"], "image_size": cfg["data"]["image_size"], "normalize": cfg["data"]["normalize"],
           "dtype": f["dtype"]}
    # beyond the paper: in the cache key only when set, so caches made before these options keep their key
    if f["grid"]:
        out["grid"] = f["grid"]
    if f["padding"] != "zeros":
        out["padding"] = f["padding"]
    return out


def feature_runtime(cfg: dict) -> dict:
    """Settings that change how fast features are made, not what they are (not rerun triggers)."""
    f = cfg["features"]
    return {"batch_size": f["batch_size"], "num_workers": f["num_workers"], "device": cfg["device"],
            "channels_last": f["channels_last"], "amp": f["amp"], "train_in_memory": cfg["cae"]["in_memory"]}


def feature_key(cfg: dict) -> str:
    p = feature_params(cfg)
    return f"{p['backbone']}-{p['image_size']}-{feature_params_key(p)}"


def split_params(cfg: dict) -> dict:
    return {"val_fraction": cfg["data"]["val_fraction"], "seed": cfg["seed"]}


def pca_params(cfg: dict) -> dict:
    return {"variance": cfg["pca"]["variance"], "max_samples": cfg["pca"]["max_samples"], "seed": cfg["seed"]}


def uses_pca(cfg: dict) -> bool:
    """d is chosen by PCA: the CAE with latent_dim auto (the Gaussian reference has no latent d)."""
    return cfg["model"] == "cae" and cfg["cae"]["latent_dim"] == "auto"


def cae_params(cfg: dict) -> dict:
    """The model's params: the CAE's, or (``model: gaussian``) the per-location Gaussian reference's."""
    if cfg["model"] == "gaussian":
        g = cfg["gaussian"]
        return {"kind": "gaussian", "channels": g["channels"], "shrinkage": g["shrinkage"], "seed": cfg["seed"]}
    c = cfg["cae"]
    out = {"latent_dim": c["latent_dim"], "normalize": c["normalize"], "batchnorm": c["batchnorm"],
           "epochs": c["epochs"], "batch_size": c["batch_size"], "lr": c["lr"],
           "early_stopping": c["early_stopping"], "checkpoint": c["checkpoint"],
           "seed": cfg["seed"] if c["seed"] is None else c["seed"]}
    # beyond the paper: recorded only when they leave the paper's 1×1 CAE, so that models trained before
    # these options existed keep their keys and are not retrained
    if c["kernel"] > 1:
        out.update(kernel=c["kernel"], padding=c["padding"], depthwise=c["depthwise"])
    return out


def bundle_params(cfg: dict) -> dict:
    """What a model bundle carries besides the model and thresholds: how to make f(x), and top-k."""
    out = {"features": feature_params(cfg), "top_k": cfg["scoring"]["top_k"], "experiment": cfg["experiment"]}
    return {**out, **border_params(cfg)}


def border_params(cfg: dict) -> dict:
    """scoring.border, recorded only when used (beyond the paper), so earlier artifacts keep their params."""
    b = cfg["scoring"]["border"]
    return {"border": b} if b else {}


def metrics_params(cfg: dict, dataset: str | None = None) -> dict:
    t, m = cfg["thresholds"], cfg["metrics"]
    eval_size = m["eval_size"]
    if dataset is not None and cfg["datasets"][dataset].get("eval_size"):
        eval_size = cfg["datasets"][dataset]["eval_size"]
    c = cfg["cae"]
    return {"alpha": t["alpha"], "percentile": t["percentile"], "pixel_fpr": t["pixel_fpr"],
            "eval_size": eval_size, "pixel": m["pixel"], "pro_fpr_limit": m["pro_fpr_limit"],
            # the validation images also chose the checkpoint (or the stopping epoch): thresholds are optimistic
            "val_selected_model": c["checkpoint"] == "best_val" or c["early_stopping"] > 0, **border_params(cfg)}


# ---- artifact paths: one definition for the Snakefile's patterns and for dfr.run ----
#
# What several experiments (or a study's variants) can share lives under a key made of exactly the settings
# that shape it: the feature cache under the feature key, the split under its fraction and seed, PCA and
# the model (with its history and error maps) under hashes of their own params and of their inputs' keys.
# What depends on top-k or thresholds (scores, metrics, plots, bundle, tables) is the experiment's own.

RESERVED_EXPERIMENTS = {"features", "models", "prepared", "datasets", "studies"}


def split_key(cfg: dict) -> str:
    p = split_params(cfg)
    return f"val{p['val_fraction']:g}-seed{p['seed']}"


def pca_key(cfg: dict) -> str:
    return "pca-" + feature_params_key({"features": feature_key(cfg), "split": split_key(cfg),
                                        **pca_params(cfg)})


def model_key(cfg: dict) -> str:
    """The CAE's key: its params and the keys of everything it is trained from. Its maps share it."""
    c = cae_params(cfg)
    upstream = {"features": feature_key(cfg), "split": split_key(cfg),
                "pca": pca_key(cfg) if uses_pca(cfg) else None}
    if c.get("kind") == "gaussian":
        return f"gauss-c{c['channels'] or 'all'}-{feature_params_key({**upstream, **c})}"
    return f"d{c['latent_dim']}-e{c['epochs']}-{feature_params_key({**upstream, **c})}"


def keys(cfg: dict) -> dict[str, str]:
    """The wildcard values of a config's shared artifacts (fkey, skey, pkey, mkey) and its experiment."""
    from . import ensemble

    return {"fkey": feature_key(cfg), "skey": split_key(cfg), "pkey": pca_key(cfg), "mkey": model_key(cfg),
            "ekey": ensemble.key(cfg), "experiment": cfg["experiment"]}


def patterns(results: str) -> dict[str, str]:
    """Every per-category artifact as a Snakemake wildcard pattern."""
    r = results.rstrip("/")
    prep, feats = f"{r}/prepared/{{dataset}}/{{category}}", f"{r}/features/{{dataset}}/{{category}}/{{fkey}}"
    models, exp = f"{r}/models/{{dataset}}/{{category}}", f"{r}/{{experiment}}/{{dataset}}/{{category}}"
    return {
        "synthetic": f"{r}/datasets/{{dataset}}/{{category}}/synthetic.json",
        "index": f"{prep}/index.csv", "split": f"{prep}/split-{{skey}}.json",
        "features": feats + "/{split}.h5", "features_train": f"{feats}/train.h5",
        "features_test": f"{feats}/test.h5",
        "pca": f"{models}/{{pkey}}/pca.json", "model": f"{models}/{{mkey}}/model.pt",
        "history": f"{models}/{{mkey}}/history.csv", "maps": f"{models}/{{mkey}}/maps.h5",
        "ensemble_maps": f"{models}/{{ekey}}/maps.h5",
        "scores": f"{exp}/scores.csv", "metrics": f"{exp}/metrics.json", "plots": f"{exp}/plots",
        "bundle": f"{exp}/bundle.pt",
    }


def _fill(pattern: str, values: dict) -> str:
    for k, v in values.items():
        pattern = pattern.replace("{" + k + "}", v)
    return pattern


def paths(cfg: dict, dataset: str, category: str) -> dict[str, str]:
    """Every artifact path of one category under this config."""
    from . import ensemble

    values = {**keys(cfg), "dataset": dataset, "category": category}
    out = {k: _fill(v, values) for k, v in patterns(cfg["results"]).items()}
    ms = ensemble.members(cfg)
    if ms:  # the experiment scores the fused maps; its training curve shown is the first member's
        first = paths(ms[0], dataset, category)
        out.update(maps=out["ensemble_maps"], model=first["model"], history=first["history"])
    else:
        del out["ensemble_maps"]
    return out


LOG_PATTERNS = {
    "prepare_dataset": "logs/datasets/{root}.log", "synthetic": "logs/synthetic/{dataset}/{category}.log",
    "index": "logs/index/{dataset}/{category}.log", "split": "logs/split/{dataset}/{category}/{skey}.log",
    "features": "logs/features/{dataset}/{category}/{fkey}/{split}.log",
    "pca": "logs/pca/{dataset}/{category}/{pkey}.log", "train": "logs/train/{dataset}/{category}/{mkey}.log",
    "maps": "logs/maps/{dataset}/{category}/{mkey}.log",
    "ensemble": "logs/ensemble/{dataset}/{category}/{ekey}.log", "tables": "logs/{experiment}/tables/{dataset}.log",
    **{rule: f"logs/{{experiment}}/{rule}/{{dataset}}/{{category}}.log"
       for rule in ("scores", "metrics", "plots", "bundle")},
    "study": "logs/{experiment}/study.log",
}


def log_paths(cfg: dict, dataset: str, category: str = "", split: str = "") -> dict[str, str]:
    """Each rule's log for one job of this config. A job's benchmark record (wall time, peak RSS) is its
    log's path under benchmarks/ (:func:`benchmark_path`)."""
    values = {**keys(cfg), "dataset": dataset, "category": category, "split": split}
    return {k: _fill(v, values) for k, v in LOG_PATTERNS.items()}


def benchmark_path(log: str) -> str:
    return "benchmarks/" + log.removeprefix("logs/").removesuffix(".log") + ".tsv"


def table_patterns(results: str) -> dict[str, str]:
    t = f"{results.rstrip('/')}/{{experiment}}/tables"
    return {"csv": f"{t}/{{dataset}}.csv", "md": f"{t}/{{dataset}}.md", "val": f"{t}/{{dataset}}_val_thresholds.csv"}


def table_paths(cfg: dict, dataset: str) -> dict[str, str]:
    return {k: _fill(v, {"experiment": cfg["experiment"], "dataset": dataset})
            for k, v in table_patterns(cfg["results"]).items()}


def reference(cfg: dict, dataset: str) -> str | None:
    """The paper's table to show beside a dataset's: set in the config, else by the dataset's kind."""
    ds = cfg["datasets"][dataset]
    return ds.get("reference") or {"mvtec": "mvtec_ad", "visa": "visa"}.get(ds["kind"])


def dataset_root(cfg: dict, dataset: str) -> str:
    ds = cfg["datasets"][dataset]
    if ds["kind"] == "synthetic":
        return f"{cfg['results'].rstrip('/')}/datasets/{dataset}"
    return (ds["root"] or f"data/{dataset}").rstrip("/")
