"""Latent dimension by PCA (§5.3): the smallest d whose components retain the configured variance."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from dfr.stages.cache import FeatureCache
from dfr.io import DFRError, provenance, read_json, write_json

log = logging.getLogger(__name__)

# The code version of the PCA selection of d: dfr.keys reads it (without importing
# this module) into the params and keys of what it makes. Bump it when a change alters what is written.
CODE_VERSIONS = {"pca": 1}
# tests/test_golden.py: per version, the digests of the stage's fixed tiny input and of its rounded output
GOLDEN = {"pca": {1: ("224109bdd5327b23", "6755876ca5350749")}}


def location_vectors(cache: FeatureCache, ids: list[str], max_samples: int, seed: int,
                     batch: int = 32) -> np.ndarray:
    """Per-location vectors f_ij(x) of the given images, shape [samples, C]; a seeded sample when huge."""
    n, c, h, w = len(ids), *cache.shape[1:]
    if n == 0:
        raise DFRError(f"{cache.path}: no training images to fit PCA on")
    per_image = h * w if n * h * w <= max_samples else max(1, math.ceil(max_samples / n))
    rng = np.random.default_rng(seed)
    pos = cache.positions(ids)
    out = []
    for start in range(0, n, batch):
        block = cache.read(pos[start:start + batch])  # [b, C, H, W]
        vec = block.reshape(len(block), c, h * w).transpose(0, 2, 1)  # [b, HW, C]
        for v in vec:
            if per_image < h * w:
                v = v[np.sort(rng.choice(h * w, per_image, replace=False))]
            out.append(v)
    return np.concatenate(out, axis=0)


def select_latent_dim(x: np.ndarray, variance: float) -> tuple[int, np.ndarray]:
    """(d, cumulative explained variance ratio) of PCA on rows of ``x``."""
    if not 0 < variance <= 1:
        raise DFRError(f"pca.variance must be in (0, 1], got {variance}")
    solver = "covariance_eigh" if x.shape[0] > x.shape[1] else "full"
    try:
        pca = PCA(svd_solver=solver).fit(x)
    except ValueError:  # older scikit-learn without covariance_eigh
        pca = PCA(svd_solver="full").fit(x)
    cum = np.cumsum(pca.explained_variance_ratio_)
    d = int(np.searchsorted(cum, variance - 1e-12) + 1)
    return min(d, len(cum)), cum


def run(features: str | Path, split_json: str | Path, out: str | Path, params: dict) -> dict:
    split = read_json(split_json)
    with FeatureCache(features) as cache:
        # no max_samples: the key says that every location vector fits (dfr.keys.pca_params)
        x = location_vectors(cache, split["train"], params.get("max_samples") or 2**62, params.get("seed", 0))
    d, cum = select_latent_dim(x.astype(np.float64), params["variance"])
    result = {
        "latent_dim": d,
        "variance": params["variance"],
        "explained_at_d": float(cum[d - 1]),
        "n_samples": int(x.shape[0]),
        "n_channels": int(x.shape[1]),
        "cumulative_explained_variance": [round(float(v), 6) for v in cum],
        **provenance(params),
    }
    write_json(out, result)
    log.info("PCA on %d x %d vectors: d = %d retains %.4f of the variance", *x.shape, d, cum[d - 1])
    return result
