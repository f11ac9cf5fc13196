"""A nearest-neighbour memory bank on the same cached features (PatchCore-style; beyond the paper).

Every location vector f_ij(x) of the normal training images is a patch. A greedy coreset (k-center: each
step adds the patch farthest from those chosen) keeps ``coreset`` of them, chosen on a seeded Gaussian random
projection of the patches to ``projection`` dimensions (Johnson-Lindenstrauss: distances kept within a few per
cent at a fraction of the cost), as PatchCore does. A(x)_ij is the Euclidean distance of f_ij(x) to its nearest
memory patch, in the full feature space; with ``sigma`` (in cells of f(x)'s grid) the map is smoothed by a
Gaussian, as PatchCore smooths its upsampled map (its σ = 4 px at 224² is 0.5 cell of a 28² grid).

PatchCore's image score is the map's maximum: ``scoring.top_k: 1`` (the paper's top-k mean is the option). Its
re-weighting of that maximum by the nearest patch's neighbourhood is not implemented.

Memory: the fit holds the projected patches (N × projection float32, N = training images × locations) and the
distance of each to the coreset, never the patches themselves (they are read from the cache in batches, twice);
A(x) compares ``rows`` locations at a time with the bank (a rows × bank matrix).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfr.stages.cache import FeatureCache
from dfr.heads.common import write_fitted
from dfr.planning.resources import READ_BATCH as BATCH
from dfr.io import DFRError, read_json

log = logging.getLogger(__name__)




class MemoryBank(nn.Module):
    """The coreset of training patches; ``anomaly_map(f)`` is A(x), each location's distance to its nearest."""

    kind = "memory_bank"

    def __init__(self, bank: torch.Tensor, sigma: float = 0.0, rows: int = 4096):
        super().__init__()
        self.register_buffer("bank", bank.float())  # [M, C]
        self.register_buffer("bank_sq", bank.float().pow(2).sum(1))  # ||m||² [M]
        self.sigma, self.rows = float(sigma), int(rows)
        self.register_buffer("kernel", gaussian_kernel(self.sigma))  # [1, 1, k, k] (1x1 of 1 when sigma is 0)
        self.pad = self.kernel.shape[-1] // 2  # a Python int: a traced graph keeps it as a constant

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Each row's squared distance to its nearest bank patch: ||x||² - 2 x·m + ||m||², clamped at 0."""
        d2 = torch.addmm(self.bank_sq[None], x, self.bank.t(), alpha=-2.0)
        return (d2.min(1).values + x.pow(2).sum(1)).clamp_min(0)

    def anomaly_map(self, f: torch.Tensor) -> torch.Tensor:
        n, c, h, w = f.shape
        if c != self.bank.shape[1]:
            raise DFRError(f"memory bank of {self.bank.shape[1]}-channel patches, got f(x) of {c} channels")
        x = f.float().permute(0, 2, 3, 1).reshape(-1, c)
        if torch.jit.is_tracing():  # one product: a traced graph must not fix the number of chunks
            d2 = self.nearest(x)
        else:  # rows x bank at a time: memory bounded by the chunk, not by the batch
            d2 = torch.cat([self.nearest(x[i:i + self.rows]) for i in range(0, x.shape[0], self.rows)])
        a = d2.sqrt().view(n, 1, h, w)
        if self.pad:
            a = F.conv2d(F.pad(a, [self.pad] * 4, mode="replicate"), self.kernel)
        return a[:, 0]


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 2-D Gaussian of standard deviation ``sigma`` (cells), radius ceil(3 sigma); [[1]] for 0."""
    if sigma <= 0:
        return torch.ones(1, 1, 1, 1)
    r = max(1, math.ceil(3 * sigma))
    g = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64).pow(2) / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g).float()[None, None]


def projection_matrix(c: int, dim: int, seed: int) -> torch.Tensor:
    """A seeded Gaussian random projection R^c -> R^dim (scaled so that distances are kept on average)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(c, dim, generator=gen) / math.sqrt(dim)


def greedy_coreset(z: torch.Tensor, m: int, start: int) -> torch.Tensor:
    """Indices of ``m`` rows of ``z`` chosen greedily (k-center): from ``start``, each step adds the row farthest
    from the chosen ones. O(rows × m) distance evaluations; ``z`` is the projected patches."""
    z_sq = z.pow(2).sum(1)

    def dist(i: int) -> torch.Tensor:
        return (z_sq - 2 * (z @ z[i]) + z_sq[i]).clamp_min_(0)

    chosen = torch.empty(m, dtype=torch.long)
    chosen[0] = start
    mind = dist(start)
    for i in range(1, m):
        chosen[i] = last = int(mind.argmax())
        torch.minimum(mind, dist(last), out=mind)
    return chosen


def fit(features: str | Path, split_json: str | Path, out_model: str | Path, out_history: str | Path,
        params: dict, out_info: str | Path | None = None) -> dict:
    """The memory bank of the training images' patches: projected, coreset chosen, gathered in full."""
    t0 = time.perf_counter()
    split = read_json(split_json)
    fraction, dim, seed = float(params["coreset"]), int(params["projection"]), int(params["seed"])
    with FeatureCache(features) as cache:
        c, h, w = cache.shape[1:]
        pos = cache.positions(split["train"])
        if len(pos) < 1:
            raise DFRError(f"{features}: a memory bank needs at least one training image")
        n = len(pos) * h * w
        m = n if fraction >= 1 else max(1, math.ceil(fraction * n))
        if m < n:
            proj = projection_matrix(c, min(dim, c), seed)
            z = torch.empty(n, proj.shape[1])
            for i in range(0, len(pos), BATCH):
                z[i * h * w:(i + BATCH) * h * w] = _patches(cache, pos[i:i + BATCH]) @ proj
            start = int(np.random.default_rng(seed).integers(n))
            chosen = greedy_coreset(z, m, start).sort().values
            del z
        else:
            chosen = torch.arange(n)
        bank = torch.empty(m, c)
        per_batch = BATCH * h * w
        for i in range(0, len(pos), BATCH):  # gather the chosen patches, one batch of images at a time
            lo = i * h * w
            sel = chosen[(chosen >= lo) & (chosen < lo + per_batch)]
            if len(sel):
                where = torch.searchsorted(chosen, sel)
                bank[where] = _patches(cache, pos[i:i + BATCH])[sel - lo]
        model = MemoryBank(bank, params.get("sigma", 0.0))
        losses = {}
        with torch.no_grad():  # the mean squared nearest-patch distance of the held-out normals
            p = cache.positions(split["val"])
            if len(p):
                losses["val"] = float(torch.cat([model.nearest(_patches(cache, p[i:i + BATCH]))
                                                 for i in range(0, len(p), BATCH)]).mean())
    seconds = time.perf_counter() - t0
    write_fitted(model, MemoryBank.kind, params, out_model, out_history, out_info, in_channels=c, grid=[h, w],
                seconds=seconds, losses=losses, parameters=int(bank.numel()))
    log.info("memory bank: %d of %d training patches (%.2f %%, greedy coreset on %d projected dimensions), "
             "%d channels, %.1f s", m, n, 100 * m / n, min(dim, c), c, seconds)
    return {"bank": m, "patches": n, "seconds": seconds, **losses}


def _patches(cache: FeatureCache, positions: np.ndarray) -> torch.Tensor:
    """The location vectors of some images, one row each, in image then row-major location order."""
    x = torch.from_numpy(cache.read(positions))
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def from_checkpoint(ckpt: dict) -> MemoryBank:
    sd = ckpt["state_dict"]
    model = MemoryBank(sd["bank"], ckpt["params"].get("sigma", 0.0))
    model.load_state_dict(sd)
    return model.eval()
