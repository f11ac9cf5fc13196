"""Ensembles (beyond the paper): several models' error maps, each normalised by its own validation maps, fused.

    ensemble:
      members:
        - {}                                        # the config itself
        - {data.image_size: 448}                    # the same model on a finer grid
        - {features.backbone: tf_efficientnet_lite1, cae.seed: 1}

Each member is this config with its dotted overrides (as a study variant is), a model of its own with its
own keyed feature cache, PCA, model and maps, shared with any experiment that trains the same. A member's
A(x) is turned into z-scores by the mean and standard deviation of its maps of the *calibration* images, so
members with different scales weigh alike; the z-maps are resized (bilinear) to the finest member grid and
averaged. The fused maps then go through scoring, thresholds and metrics like a single model's.

Calibration is disjoint from thresholding: the held-out normal images (the split's ``val``, in its seeded
order) are halved; the first half (rounded up) sets the members' z-score statistics and is written with the
split ``calib``, the other half stays ``val`` and sets the thresholds. So no image both normalises the
members and places T, and an ensemble needs at least two held-out normal images.

Members may differ in what makes the model (image size, backbone, layers, grid, PCA, CAE, model kind,
seeds of the CAE) but not in the data split: their validation images must be the same. The members are
expanded by :mod:`dfr.plan`; this module fuses their maps.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dfr.io import DFRError
from dfr.stages.scoring import Maps, write_maps

log = logging.getLogger(__name__)

# The version of the fusion's numerics (dfr.keys reads it into the fused maps' key): bump it when a change
# alters what fuse() writes.
CODE_VERSIONS = {"ensemble": 2}
# tests/test_golden.py: per version, the digests of the stage's fixed tiny input and of its rounded output
GOLDEN = {"ensemble": {2: ("189b5b20147e4932", "c4b7fe68cdbc8e8e")}}

CALIBRATION = "calib"  # the split name of the held-out normal images that set the z-score statistics


def calibration_rows(split: pd.Series) -> np.ndarray:
    """The rows of the calibration images: the first half (rounded up) of the ``val`` rows, in their order."""
    val = np.nonzero((split == "val").to_numpy())[0]
    return val[: (len(val) + 1) // 2]


def zfuse(maps: list[torch.Tensor], stats: list[tuple[float, float]], grid: tuple[int, int]) -> torch.Tensor:
    """The fused A(x) [N, *grid] (float32) of members' maps [N, h_i, w_i]: each z-scored by its (mean, std) in
    float32, resized bilinearly to ``grid``, averaged in float64. The one fusion of the pipeline, ``dfr predict``
    and the exported graph (plain tensor operations: it traces)."""
    fused = None
    for a, (mu, sd) in zip(maps, stats):
        z = ((a.float() - mu) / sd)[:, None]
        if tuple(z.shape[-2:]) != tuple(grid):
            z = F.interpolate(z, size=tuple(grid), mode="bilinear", align_corners=False)
        fused = z[:, 0].double() if fused is None else fused + z[:, 0].double()
    return (fused / len(maps)).float()


def fuse(maps_paths: list[str | Path], out: str | Path, params: dict) -> np.ndarray:
    """Fused A(x) of the members' maps.h5 files, written to ``out`` (same rows, finest grid; the calibration
    images' split renamed ``calib``)."""
    if len(maps_paths) < 2:
        raise DFRError(f"{out}: an ensemble needs at least two members' maps, got {len(maps_paths)}")
    ms = [Maps(p) for p in maps_paths]
    first = ms[0].meta
    for p, m in zip(maps_paths[1:], ms[1:]):
        if len(m.meta) != len(first) or not (m.meta[["image_id", "split"]].values
                                             == first[["image_id", "split"]].values).all():
            raise DFRError(f"{p}: its images or their split differ from {maps_paths[0]}'s; the members of an "
                           "ensemble must be made from the same index and split (remake both)")
    n_val = int((first.split == "val").sum())
    if n_val < 4:
        raise DFRError(f"{maps_paths[0]}: {n_val} validation map(s); an ensemble needs at least four held-out "
                       "normal images, half to normalise the members by and half to set the thresholds "
                       "(at least two: dfr.metrics) (raise data.val_fraction)")
    calib = calibration_rows(first.split)
    grid = (max(m.A.shape[-2] for m in ms), max(m.A.shape[-1] for m in ms))
    stats = []
    for p, m in zip(maps_paths, ms):
        mu, sd = float(m.A[calib].mean()), float(m.A[calib].std())
        if not sd > 0:
            raise DFRError(f"{p}: its maps of the calibration images are constant (std 0); it cannot be normalised")
        stats.append({"maps": str(p), "grid": list(m.A.shape[-2:]), "calib_mean": mu, "calib_std": sd})
        log.info("member %s: %dx%d, calibration mean %.4g, std %.4g", p, *m.A.shape[-2:], mu, sd)
    fused = zfuse([torch.from_numpy(m.A) for m in ms], [(s["calib_mean"], s["calib_std"]) for s in stats],
                  grid).numpy()
    meta = first.copy()
    meta.loc[meta.index[calib], "split"] = CALIBRATION
    write_maps(out, fused, meta, {**params, "normalisation": stats, "grid": list(grid),
                                  "calibration": [str(i) for i in first.image_id.iloc[calib]]})
    log.info("wrote %s: %d members fused at %dx%d; %d images calibrated, %d set the thresholds", out, len(ms),
             *grid, len(calib), n_val - len(calib))
    return fused
