"""Configuration: defaults and schema validation with readable messages, for one config.

The second module of the planning layer (overrides → config → keys → layout → workload → plan); the heads'
sections come from the heads themselves (:mod:`dfr.planning.heads`). A study's variants and
an ensemble's members are configs of their own, each validated here; :mod:`dfr.plan` expands them.
No torch, no h5py: the Snakefile and every job import this.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import yaml

from dfr import shapes
from dfr.io import DFRError
from dfr.planning import heads

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"

MVTEC_CATEGORIES = list(shapes.MVTEC_AD)
VISA_CATEGORIES = list(shapes.VISA)
MVTEC_AD2_CATEGORIES = list(shapes.MVTEC_AD2_PRIVATE)


# names of the shared folders under results/ (dfr.layout), which an experiment may not take
RESERVED_EXPERIMENTS = frozenset({"features", "models", "prepared", "datasets", "studies"})


def schema() -> dict:
    """The config schema: schemas/config.schema.yaml with every head's section (:mod:`dfr.planning.heads`) and
    the heads as ``model``'s choices (composed once per set of heads; callers do not modify it)."""
    return _schema(heads.generation())


@functools.lru_cache(maxsize=4)
def _schema(generation: int) -> dict:
    base = yaml.safe_load(SCHEMA_PATH.read_text())
    found = heads.all_heads()
    props = {}
    for key, node in base["properties"].items():
        props[key] = node
        if key == "model":
            node["enum"] = list(found)
            node["description"] = node["description"].rstrip() + " " + "; ".join(
                f"{kind}, {h.title}" for kind, h in found.items())
        if key == "ensemble":  # the heads' sections follow the choice of head and the ensemble
            for kind, h in found.items():
                if kind in base["properties"]:
                    raise DFRError(f"head {kind!r}: its section would replace the config's own {kind!r}")
                props[kind] = h.schema
    return {**base, "properties": props}


def default_model() -> str:
    """The head of a config that names none (the schema's ``model`` default); a model's params or checkpoint
    without a ``kind`` are of it too (they predate the other heads)."""
    return schema()["properties"]["model"]["default"]


@functools.lru_cache(maxsize=4)
def _validator(generation: int = 0):
    """The schema's validator, extended (jsonschema's recipe, the one ``snakemake.utils.validate`` applies) to
    set each absent property's default as it validates; built once per set of heads, so that a study's variants
    and members cost no schema parse each."""
    import jsonschema  # only here: a machine without it still runs jobs, which never validate a config

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, sch):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if key not in instance and "default" in sub:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, properties, instance, sch)

    return jsonschema.validators.extend(base, {"properties": properties_with_defaults})(schema())


def validate(cfg: dict, source: str = "config") -> dict:
    """Fill defaults and validate; raise :class:`DFRError` listing every problem with its key path."""
    cfg = copy.deepcopy(cfg)
    errors = sorted(_validator(heads.generation()).iter_errors(cfg), key=lambda e: list(e.absolute_path))
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
            if shape == "mvtec_ad2" and ds["synthetic"]["layout"] != "mvtec_ad2":
                raise DFRError(f"{source}: datasets.{name}.synthetic: shape mvtec_ad2 needs layout: mvtec_ad2 "
                               "(its validation/ and private test sets are written in MVTec AD 2's layout)")
        known = {"mvtec": MVTEC_CATEGORIES, "visa": VISA_CATEGORIES, "mvtec_ad2": MVTEC_AD2_CATEGORIES}.get(ds["kind"])
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




# ---- config/README.md: every key of the schema, with its type, default and what it does ----

def _type(node: dict) -> str:
    if "enum" in node:
        return " \\| ".join("null" if v is None else f"`{v}`" for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(f"`{o['const']}`" if "const" in o else _type(o) for o in node["oneOf"])
    t = node.get("type", "mapping")
    return " or ".join(t) if isinstance(t, list) else t


def _keys(node: dict, prefix: str = "") -> list[tuple[str, dict]]:
    out = []
    for k, sub in node.get("properties", {}).items():
        key = f"{prefix}{k}"
        if k == "datasets" and not prefix:
            out += [(key, sub)] + _keys(sub["additionalProperties"], "datasets.<name>.")
        elif sub.get("properties") and k not in ("study",):
            out += _keys(sub, key + ".")
        else:
            out.append((key, sub))
            if k == "study":
                out += [(f"study.{s}", n) for s, n in sub["properties"].items()]
    return out


def readme_table() -> str:
    """The keys table of config/README.md, generated from the schema (tests/test_config.py checks the file)."""
    lines = ["| key | type | default | what it does |", "|---|---|---|---|"]
    for key, node in _keys(schema()):
        default = "(required)" if "default" not in node else f"`{json.dumps(node['default'])}`"
        text = " ".join(str(node.get("description", "")).split()).replace("|", "\\|")
        lines.append(f"| `{key}` | {_type(node)} | {default} | {text} |")
    return "\n".join(lines) + "\n"


README_MARK = "<!-- the keys: generated from workflow/schemas/config.schema.yaml by `make config-readme` -->"


if __name__ == "__main__":  # python -m dfr.config: rewrite config/README.md's table from the schema
    import sys

    readme = Path(__file__).resolve().parents[3] / "config" / "README.md"
    text = readme.read_text()
    if README_MARK not in text:
        sys.exit(f"{readme}: no line {README_MARK!r} to put the table after")
    readme.write_text(text.split(README_MARK)[0] + README_MARK + "\n\n" + readme_table())
