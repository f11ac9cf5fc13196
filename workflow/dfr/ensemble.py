"""Ensembles (beyond the paper): several models' error maps, each normalised by its own validation maps, fused.

    ensemble:
      members:
        - {}                                        # the config itself
        - {data.image_size: 448}                    # the same model on a finer grid
        - {features.backbone: tf_efficientnet_lite1, cae.seed: 1}

Each member is this config with its dotted overrides (as a study variant is), a model of its own with its
own keyed feature cache, PCA, model and maps, shared with any experiment that trains the same. A member's
A(x) is turned into z-scores by the mean and standard deviation of its validation (held-out normal) maps,
so members with different scales weigh alike; the z-maps are resized (bilinear) to the finest member grid
and averaged. The fused maps then go through scoring, thresholds and metrics like a single model's.

Members may differ in what makes the model (image size, backbone, layers, grid, PCA, CAE, model kind,
seeds of the CAE) but not in the data split: their validation images must be the same.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .io import DFRError

log = logging.getLogger(__name__)

# What a member may change: the model and what it is fed. Not the split (seed, data.val_fraction): the
# members' validation maps must be of the same images.
MEMBER_KEYS = ("data.image_size", "data.normalize", "features.", "pca.", "cae.", "model", "gaussian.")
FUSION = {"normalise": "validation z-score", "combine": "mean", "grid": "finest"}


def _allowed(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in MEMBER_KEYS)


_MEMBERS: dict[str, list[dict]] = {}  # config (as JSON) -> its members: input functions ask for them often


def members(cfg: dict, source: str = "config") -> list[dict]:
    """The validated config of each member; [] when the config is a single model."""
    listed = (cfg.get("ensemble") or {}).get("members") or []
    if not listed:
        return []
    key = json.dumps(cfg, sort_keys=True, default=str)
    if key not in _MEMBERS:
        _MEMBERS[key] = _members(cfg, listed, source)
    return _MEMBERS[key]


def _members(cfg: dict, listed: list, source: str) -> list[dict]:
    from . import config as dfr_config
    from . import studies

    where = f"{source}: ensemble.members"
    if len(listed) < 2:
        raise DFRError(f"{where}: an ensemble needs at least two members (leave the list empty for one model)")
    base = {k: v for k, v in cfg.items() if k not in ("ensemble", "study", "study_variant")}
    base["experiment"] = cfg["experiment"].split("/")[0]  # a study variant's is <study>/<variant>; unused
    out, seen = [], {}
    for i, over in enumerate(listed):
        raw = copy.deepcopy(base)
        for key, value in studies._flatten(over or {}).items():
            if key in studies.RUNTIME_ONLY:
                raise DFRError(f"{where}[{i}]: {key} changes only how fast artifacts are made; set it for the "
                               "whole config")
            if not _allowed(key):
                raise DFRError(f"{where}[{i}]: {key}: a member may change only the model and its features "
                               f"({', '.join(k.rstrip('.') for k in MEMBER_KEYS)}); the members share the data, "
                               "the split and the scoring")
            studies.set_key(raw, key, value, f"{where}[{i}]")
        m = dfr_config.validate(raw, f"{where}[{i}]")
        k = dfr_config.model_key(m)
        if k in seen:
            raise DFRError(f"{where}: members {seen[k]} and {i} make the same model ({k}); give them different "
                           "settings, e.g. cae.seed")
        seen[k] = i
        out.append(m)
    return out


def key(cfg: dict) -> str:
    """The fused maps' key (beside the models' keys): a hash of the members' model keys and the fusion."""
    from .features import feature_params_key

    p = fusion_params(cfg)
    return f"ens{len(p['members'])}-{feature_params_key(p)}" if p["members"] else ""


def fusion_params(cfg: dict) -> dict:
    """What shapes the fused maps: the members' models, in order, and the fusion rule."""
    from . import config as dfr_config

    return {"members": [dfr_config.model_key(m) for m in members(cfg)], **FUSION}


def fuse(maps_paths: list[str | Path], out: str | Path, params: dict) -> np.ndarray:
    """Fused A(x) of the members' maps.h5 files, written to ``out`` (same rows, finest grid)."""
    from .scoring import Maps, write_maps

    if len(maps_paths) < 2:
        raise DFRError(f"{out}: an ensemble needs at least two members' maps, got {len(maps_paths)}")
    ms = [Maps(p) for p in maps_paths]
    first = ms[0].meta
    for p, m in zip(maps_paths[1:], ms[1:]):
        if len(m.meta) != len(first) or not (m.meta[["image_id", "split"]].values
                                             == first[["image_id", "split"]].values).all():
            raise DFRError(f"{p}: its images or their split differ from {maps_paths[0]}'s; the members of an "
                           "ensemble must be made from the same index and split (remake both)")
    val = (first.split == "val").to_numpy()
    if val.sum() < 1:
        raise DFRError(f"{maps_paths[0]}: no validation maps to normalise the members by; an ensemble needs "
                       "held-out normal images (data.val_fraction > 0)")
    hw = (max(m.A.shape[-2] for m in ms), max(m.A.shape[-1] for m in ms))
    fused = np.zeros((len(first), *hw), np.float64)
    stats = []
    for p, m in zip(maps_paths, ms):
        mu, sd = float(m.A[val].mean()), float(m.A[val].std())
        if not sd > 0:
            raise DFRError(f"{p}: its validation maps are constant (std 0); it cannot be normalised")
        z = torch.from_numpy((m.A - mu) / sd)[:, None]
        if tuple(z.shape[-2:]) != hw:
            z = F.interpolate(z, size=hw, mode="bilinear", align_corners=False)
        fused += z[:, 0].numpy()
        stats.append({"maps": str(p), "grid": list(m.A.shape[-2:]), "val_mean": mu, "val_std": sd})
        log.info("member %s: %dx%d, validation mean %.4g, std %.4g", p, *m.A.shape[-2:], mu, sd)
    fused /= len(ms)
    write_maps(out, fused.astype(np.float32), first, {**params, "normalisation": stats})
    log.info("wrote %s: %d members fused at %dx%d", out, len(ms), *hw)
    return fused
