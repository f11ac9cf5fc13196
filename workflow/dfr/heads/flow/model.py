"""A normalizing-flow head on the same cached features (in the spirit of FastFlow / CFlow; beyond the paper).

f(x) is first reduced to a seeded random subset of ``channels`` of its channels (PaDiM's reduction, as the
Gaussian head's ``channels``) and standardised by the training images' channel mean and std. ``blocks`` affine
coupling blocks then map it to z: each splits the channels in halves, and a small convolutional network
(``kernel`` × ``kernel`` convs, ``hidden`` wide: spatial context) of the first half gives a scale s and shift t
of the second, y₂ = x₂·exp(s) + t; the halves are swapped (with a fixed permutation) between blocks. s is
soft-clamped, s = c·tanh(s'/c) with c = ``clamp`` (FastFlow's and FrEIA's guard against exploding
log-determinants). The Jacobian stays triangular per location, so the log-likelihood of each location is

    log p(f_ij) = -½‖z_ij‖² - (C/2)·log 2π + Σ_blocks Σ_c s_ij,c,

and A(x)_ij is its negative (in nats, from which the constant is left out). Trained by Adam on that negative
log-likelihood of the normal training images; a loss that is not finite stops the fit with an error that
names the features (so the category).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dfr.heads.common import FeatureBatches, channel_stats, channel_subset, fits_in_ram, write_fitted
from dfr.stages.cache import FeatureCache
from dfr.io import DFRError, read_json

log = logging.getLogger(__name__)



class Coupling(nn.Module):
    """One affine coupling block: x₂ ← x₂·exp(s(x₁)) + t(x₁), s soft-clamped; returns y and Σ_c s per location."""

    def __init__(self, channels: int, hidden: int, kernel: int, clamp: float):
        super().__init__()
        self.half = channels // 2
        self.clamp = float(clamp)
        pad = kernel // 2
        self.net = nn.Sequential(
            nn.Conv2d(self.half, hidden, kernel, padding=pad, padding_mode="reflect" if pad else "zeros"),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * (channels - self.half), kernel, padding=pad,
                      padding_mode="reflect" if pad else "zeros"))
        nn.init.zeros_(self.net[-1].weight)  # the identity at the start: log-determinant 0
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, :self.half], x[:, self.half:]
        s, t = self.net(x1).chunk(2, dim=1)
        s = self.clamp * torch.tanh(s / self.clamp)
        return torch.cat([x1, x2 * torch.exp(s) + t], dim=1), s.sum(1)


class Flow(nn.Module):
    """f(x)'s chosen channels, standardised, through the coupling blocks; ``anomaly_map(f)`` is A(x), the
    negative log-likelihood of each location (up to a constant)."""

    kind = "flow"

    def __init__(self, channels: torch.Tensor, blocks: int, hidden: int, kernel: int, clamp: float):
        super().__init__()
        k = len(channels)
        if k < 2:
            raise DFRError(f"a flow needs at least 2 channels of f(x), got {k}")
        self.register_buffer("channels", channels.long())  # [C'] indices into f(x)'s channels
        self.register_buffer("mean", torch.zeros(1, k, 1, 1))
        self.register_buffer("std", torch.ones(1, k, 1, 1))
        gen = torch.Generator().manual_seed(0)  # fixed permutations between blocks (part of the architecture)
        self.register_buffer("perms", torch.stack([torch.randperm(k, generator=gen) for _ in range(blocks)]))
        self.blocks = nn.ModuleList([Coupling(k, hidden, kernel, clamp) for _ in range(blocks)])

    def nll(self, f: torch.Tensor) -> torch.Tensor:
        """-log p(f_ij) + (C'/2)·log 2π per location: [N, H, W]."""
        x = (f.float().index_select(1, self.channels) - self.mean) / self.std
        logdet = torch.zeros_like(x[:, 0])
        for perm, block in zip(self.perms, self.blocks):
            x, ld = block(x.index_select(1, perm))
            logdet = logdet + ld
        return 0.5 * x.pow(2).sum(1) - logdet

    def anomaly_map(self, f: torch.Tensor) -> torch.Tensor:
        return self.nll(f)


def fit(features: str | Path, split_json: str | Path, out_model: str | Path, out_history: str | Path,
        params: dict, out_info: str | Path | None = None) -> dict:
    """Train the flow by maximum likelihood on the training images; the final epoch is kept (the held-out
    normals set the thresholds alone). Reports the mean NLL per location of training and validation images."""
    t0 = time.perf_counter()
    seed = int(params["seed"])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    split = read_json(split_json)
    with FeatureCache(features) as cache:
        c, h, w = cache.shape[1:]
        channels = channel_subset(c, params.get("channels"), rng, "flow.channels")
        want = len(channels)
        tr, va = cache.positions(split["train"]), cache.positions(split["val"])
        model = Flow(torch.from_numpy(channels), params["blocks"], params["hidden"], params["kernel"],
                     params["clamp"])
        mean, std = channel_stats(cache, tr)
        model.mean.copy_(torch.from_numpy(mean[channels]).float().view(1, -1, 1, 1))
        model.std.copy_(torch.from_numpy(std[channels]).float().view(1, -1, 1, 1))
        in_mem = fits_in_ram(cache, len(tr) + len(va))
        train_b = FeatureBatches(cache, tr, params["batch_size"], in_mem)
        val_b = FeatureBatches(cache, va, params["batch_size"], in_mem)
        opt = torch.optim.Adam(model.parameters(), lr=params["lr"])
        history = []
        for epoch in range(1, params["epochs"] + 1):
            t_epoch = time.perf_counter()
            model.train()
            tot, n = 0.0, 0
            for x in train_b.batches(rng):
                loss = model.nll(x).mean()
                if not torch.isfinite(loss):
                    raise DFRError(f"{features}: the flow's loss is not finite in epoch {epoch} ({loss.item()}): "
                                   f"try a lower flow.lr (now {params['lr']:g}) or flow.clamp (now "
                                   f"{params['clamp']:g}), or check the features of this category")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += loss.item() * len(x)
                n += len(x)
            history.append({"epoch": epoch, "train_loss": tot / n, "val_loss": np.nan,
                            "seconds": time.perf_counter() - t_epoch, "best": epoch == params["epochs"]})
            log.info("epoch %3d  train NLL %.4f per location", epoch, tot / n)
        model.eval()
        losses = {"train": tot / n}
        if len(val_b):  # the kept (last) epoch's NLL of the held-out normals
            with torch.no_grad():
                losses["val"] = float(torch.cat([model.nll(x).flatten() for x in val_b.batches(None)]).mean())
            history[-1]["val_loss"] = losses["val"]
    seconds = time.perf_counter() - t0
    write_fitted(model, Flow.kind, params, out_model, out_history, out_info, in_channels=c,
                 grid=[h, w], seconds=seconds, losses=losses, history=history,
                 parameters=int(sum(p.numel() for p in model.parameters())))
    log.info("flow: %d of %d channels, %d blocks, %d epochs, %.1f s", want, c, params["blocks"], params["epochs"],
             seconds)
    return {"channels": want, "seconds": seconds, **losses}


def from_checkpoint(ckpt: dict) -> Flow:
    p, sd = ckpt["params"], ckpt["state_dict"]
    model = Flow(sd["channels"], p["blocks"], p["hidden"], p["kernel"], p["clamp"])
    model.load_state_dict(sd)
    return model.eval()
