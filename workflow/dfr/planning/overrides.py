"""Dotted config keys: read, set and flatten them, and which keys a study variant or an ensemble member may set.

The first module of the planning layer (overrides → config → keys → layout → workload → plan): it imports nothing of
the package but the error type and the heads' registry (:mod:`dfr.planning.heads`).
"""

from __future__ import annotations

import copy
from typing import Any

from dfr.io import DFRError
from dfr.planning import heads

# Keys a study variant may not change: what names and places the run, the data, and the study itself.
FIXED = frozenset({"experiment", "results", "datasets", "resources", "device", "study"})
# Settings that change how fast an artifact is made, not what it is: in no key and no params; they travel
# in DFR_RUNTIME, so editing them reruns nothing.
# Each head adds its own (runtime_only()).
RUNTIME_ONLY = frozenset({"features.batch_size", "features.num_workers", "features.channels_last"})
# What an ensemble member may change: the model and what it is fed, and every head's section (member_keys()). Not
# the split (seed, data.val_fraction): the members' validation maps must be of the same images. A trailing dot
# names a whole section.
MEMBER_KEYS = ("data.image_size", "data.normalize", "features.", "pca.", "model")


def runtime_only() -> frozenset[str]:
    """Every runtime-only key: the features' and each head's (:attr:`dfr.planning.heads.Head.runtime_only`)."""
    return RUNTIME_ONLY | {f"{k}.{s}" for k, h in heads.all_heads().items() for s in h.runtime_only}


def member_keys() -> tuple[str, ...]:
    return (*MEMBER_KEYS, *(f"{k}." for k in heads.kinds()))


def get(cfg: dict, key: str) -> Any:
    """cfg[a][b][c] for the dotted key a.b.c; KeyError when a part is missing."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def get_or_none(cfg: dict, key: str) -> Any:
    try:
        return get(cfg, key)
    except KeyError:
        return None


def set_key(cfg: dict, key: str, value: Any, where: str) -> None:
    """cfg[a][b][c] = value for the dotted key a.b.c (sections created as needed)."""
    node = cfg
    *parents, leaf = key.split(".")
    for i, p in enumerate(parents):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise DFRError(f"{where}: {key}: {'.'.join(parents[:i + 1])} is not a section of the config")
    node[leaf] = copy.deepcopy(value)


def flatten(overrides: dict, prefix: str = "") -> dict:
    """{'cae': {'latent_dim': 8}} and {'cae.latent_dim': 8} alike -> {'cae.latent_dim': 8}. A dataset's
    settings stay one value (``datasets`` maps names to specs, not to config keys)."""
    out = {}
    for k, v in overrides.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key.split(".")[0] != "datasets":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def member_may_set(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in member_keys())


def check_variant_key(key: str, where: str) -> None:
    top = key.split(".")[0]
    if top in FIXED:
        raise DFRError(f"{where}: {key}: a study cannot vary '{top}' (the variants share it)")
    if key in runtime_only():
        raise DFRError(f"{where}: {key} changes only how fast artifacts are made, not what they are; "
                       "vary it across runs, not as a study variant")


def check_member_key(key: str, where: str) -> None:
    if key in runtime_only():
        raise DFRError(f"{where}: {key} changes only how fast artifacts are made; set it for the whole config")
    if not member_may_set(key):
        raise DFRError(f"{where}: {key}: a member may change only the model and its features "
                       f"({', '.join(k.rstrip('.') for k in member_keys())}); the members share the data, "
                       "the split and the scoring")
