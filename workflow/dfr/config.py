"""Configuration: defaults and schema validation with readable messages, for one config.

The second module of the planning layer (overrides → config → keys → layout → workload → plan). A study's variants and
an ensemble's members are configs of their own, each validated here; :mod:`dfr.plan` expands them.
No torch, no h5py: the Snakefile and every job import this.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from . import shapes
from .io import DFRError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"

MVTEC_CATEGORIES = list(shapes.MVTEC_AD)
VISA_CATEGORIES = list(shapes.VISA)


# names of the shared folders under results/ (dfr.layout), which an experiment may not take
RESERVED_EXPERIMENTS = frozenset({"features", "models", "prepared", "datasets", "studies"})


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    """The config schema (parsed once; callers do not modify it)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema  # only here: a machine without it still runs jobs, which never validate a config

    return jsonschema.Draft202012Validator(schema())


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
    errors = sorted(_validator().iter_errors(cfg), key=lambda e: list(e.absolute_path))
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
            shape = ds["synthetic"].get("shape")
            known = list(shapes.BENCHMARKS[shape]) if shape else sorted(shapes.CATEGORIES)
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
    return cfg


def load(path: str | Path) -> dict:
    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise DFRError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise DFRError(f"{path}: not valid YAML ({e})") from None
    return validate(cfg, str(path))


