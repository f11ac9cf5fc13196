"""A reference model on the same cached features: a Gaussian per location (PaDiM-style).

At every location (i, j) of the fused grid, the training images' features f_ij(x) (optionally a seeded
random subset of the channels) give a mean μ_ij and a covariance Σ_ij + εI; A(x)_ij is the Mahalanobis
distance of f_ij(x) to it. No training loop: a streamed pass over the cache. Beside the CAE in a study it
shows what the reconstruction adds over a per-location density on the very same features.

``covariance: shared`` keeps the means per location but pools one covariance over all locations (the
within-location scatter, Σ = Σ_ij Σ_x (f_ij - μ_ij)(f_ij - μ_ij)ᵀ / (HW(n - 1)) + εI): one C'×C' matrix
instead of H·W of them (784× less memory on the paper's grid), fitted from fewer images, and A(x) is one
matrix product for all locations.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dfr.stages.cache import FeatureCache
from dfr.heads.common import channel_subset, write_fitted
from dfr.io import DFRError, read_json

log = logging.getLogger(__name__)



class Gaussian(nn.Module):
    """Per-location mean and inverse covariance; ``anomaly_map(f)`` is A(x), the Mahalanobis distance."""

    kind = "gaussian"

    def __init__(self, channels: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor):
        super().__init__()
        self.register_buffer("channels", channels.long())  # [C'] indices into f(x)'s channels
        self.register_buffer("mean", mean.float())  # [H·W, C']
        self.register_buffer("precision", precision.float())  # [H·W, C', C'], or [1, C', C'] shared

    def anomaly_map(self, f: torch.Tensor) -> torch.Tensor:
        n, _, h, w = f.shape
        if self.mean.shape[0] != h * w:
            raise DFRError(f"Gaussian model fitted on a grid of {self.mean.shape[0]} locations, got {h}x{w}")
        x = f.float().index_select(1, self.channels).flatten(2).permute(2, 0, 1) - self.mean[:, None]  # [HW, N, C']
        if self.precision.shape[0] == 1:  # one shared Σ⁻¹: a single matrix product for every location
            d2 = ((x @ self.precision[0]) * x).sum(-1).clamp_min(0)
        else:
            d2 = (torch.bmm(x, self.precision) * x).sum(-1).clamp_min(0)  # xᵀ Σ⁻¹ x per location: [HW, N]
        return d2.sqrt().permute(1, 0).reshape(n, h, w)


def fit(features: str | Path, split_json: str | Path, out_model: str | Path, out_history: str | Path,
        params: dict, out_info: str | Path | None = None) -> dict:
    """Fit the per-location Gaussians on the training images (streamed, float64 sums)."""
    t0 = time.perf_counter()
    split = read_json(split_json)
    rng = np.random.default_rng(int(params["seed"]))
    with FeatureCache(features) as cache:
        c, h, w = cache.shape[1:]
        channels = channel_subset(c, params.get("channels"), rng, "gaussian.channels")
        want = len(channels)
        pos = cache.positions(split["train"])
        if len(pos) < 2:
            raise DFRError(f"{features}: a Gaussian per location needs at least 2 training images, got {len(pos)}")
        shared = params.get("covariance", "location") == "shared"
        s1 = torch.zeros(h * w, want, dtype=torch.float64)
        s2 = torch.zeros(1 if shared else h * w, want, want, dtype=torch.float64)
        for start in range(0, len(pos), 16):
            x = torch.from_numpy(cache.read(pos[start:start + 16])[:, channels]).double()  # [B, C', H, W]
            x = x.flatten(2).permute(2, 0, 1)  # [HW, B, C']
            s1 += x.sum(1)
            if shared:
                flat = x.reshape(-1, want)
                s2[0].addmm_(flat.T, flat)  # Σ over locations and images of x xᵀ
            else:
                s2.baddbmm_(x.transpose(1, 2), x)  # Σ_b x xᵀ per location, in place (no temporary of s2's size)
        n = len(pos)
        mean = s1 / n
        if shared:  # the within-location scatter: Σ_ij (S2_ij - n μ_ij μ_ijᵀ), over HW(n - 1) degrees of freedom
            cov = (s2[0] - n * mean.T @ mean) / (h * w * (n - 1)) + float(params["shrinkage"]) * torch.eye(want)
            precision = torch.from_numpy(np.linalg.inv(cov.numpy())).float()[None]
        else:
            precision = _precision(s2, mean, n, float(params["shrinkage"]))
        del s2
        model = Gaussian(torch.from_numpy(channels), mean, precision)
        losses = {}
        for name in ("train", "val"):
            p = cache.positions(split[name])
            if len(p):
                with torch.no_grad():
                    d2 = [model.anomaly_map(torch.from_numpy(cache.read(p[i:i + 16]))).pow(2)
                          for i in range(0, len(p), 16)]
                losses[name] = float(torch.cat(d2).mean())
    seconds = time.perf_counter() - t0
    # one "epoch": the mean squared Mahalanobis distance of training and validation locations; parameters: what
    # it stores (no trained weights)
    write_fitted(model, Gaussian.kind, params, out_model, out_history, out_info, in_channels=c, grid=[h, w],
                 seconds=seconds, losses=losses, parameters=int(model.mean.numel() + model.precision.numel()))
    log.info("Gaussian per location (%s covariance): %d locations x %d of %d channels, %d training images, %.1f s",
             "one shared" if shared else "its own", h * w, want, c, n, seconds)
    return {"channels": want, "seconds": seconds, **losses}


def _precision(s2: torch.Tensor, mean: torch.Tensor, n: int, eps: float, chunk_mb: int = 256) -> torch.Tensor:
    """(Σ + εI)⁻¹ per location, in float32, from the float64 sums ``s2`` = Σ_b x xᵀ (overwritten).

    The covariance is formed in place and inverted a chunk of locations at a time, so the peak is the sums
    plus the float32 result (e.g. 7.6 + 3.8 GB for 56×56 locations × 550 channels, PaDiM's WR50 setting),
    not three float64 copies of it.
    """
    hw, k = mean.shape
    precision = torch.empty(hw, k, k, dtype=torch.float32)
    step = max(1, chunk_mb * 2**20 // (k * k * 8))
    eye = torch.eye(k, dtype=torch.float64)
    for a in range(0, hw, step):
        b = min(hw, a + step)
        cov = s2[a:b]
        cov -= n * mean[a:b, :, None] * mean[a:b, None, :]
        cov /= n - 1
        cov += eps * eye
        # numpy's LAPACK for the stacked inverses (torch's batched float64 inverse fails in some MKL builds)
        precision[a:b] = torch.from_numpy(np.linalg.inv(cov.numpy()))
    return precision


def from_checkpoint(ckpt: dict) -> Gaussian:
    sd = ckpt["state_dict"]
    return Gaussian(sd["channels"], sd["mean"], sd["precision"]).eval()
