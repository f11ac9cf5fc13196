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
seeds of the CAE) but not in the data split: their validation images must be the same. The members are
expanded by :mod:`dfr.plan`; this module fuses their maps.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .io import DFRError
from .scoring import Maps, write_maps

log = logging.getLogger(__name__)

# The version of the fusion's numerics (dfr.keys reads it into the fused maps' key): bump it when a change
# alters what fuse() writes.
CODE_VERSIONS = {"ensemble": 1}


def fuse(maps_paths: list[str | Path], out: str | Path, params: dict) -> np.ndarray:
    """Fused A(x) of the members' maps.h5 files, written to ``out`` (same rows, finest grid)."""
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
