"""What the heads share: f(x)'s cached features in batches, channel statistics and subsets, and the files a fit
writes. Torch is imported here: only a head's model side (fit, A(x)) uses this module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dfr.checkpoint import save_sealed
from dfr.io import FORMATS, DFRError, atomic_path, check_space, provenance, write_model_info
from dfr.planning.resources import IN_RAM_BYTES
from dfr.stages.cache import FeatureCache


def channel_stats(cache: FeatureCache, positions: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Channel-wise mean and std over all locations of the given images (streamed; float64 sums)."""
    c = cache.shape[1]
    s1, s2, n = np.zeros(c), np.zeros(c), 0
    for start in range(0, len(positions), batch):
        x = cache.read(positions[start:start + batch])
        s1 += x.sum(axis=(0, 2, 3), dtype=np.float64)
        s2 += np.square(x).sum(axis=(0, 2, 3), dtype=np.float64)
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 0))
    return mean, np.maximum(std, std_floor(std))


STD_FLOOR = 0.1  # relative to the median channel std


def std_floor(std: np.ndarray) -> float:
    """The smallest std a channel is normalised by: a tenth of the median channel's. A channel (nearly)
    constant on the training images, e.g. a ReLU channel that is always 0, then turns a test-time deviation
    of one typical std into 10 standard units, not 10⁶ (as an absolute floor of 1e-6 would)."""
    live = std[std > 0]
    return float(max(STD_FLOOR * np.median(live), 1e-12)) if live.size else 1.0


class FeatureBatches:
    """Batches of cached features as channels-last tensors: from RAM when it fits (or asked), else streamed
    from HDF5 one batch at a time (memory bounded by the batch, whatever the cache's size)."""

    def __init__(self, cache: FeatureCache, positions: np.ndarray, batch_size: int, in_memory: bool):
        self.cache, self.positions, self.batch_size = cache, np.asarray(positions), batch_size
        # held as N×H×W×C so that batches are channels-last without a copy
        self.data = np.ascontiguousarray(cache.read(self.positions).transpose(0, 2, 3, 1)) if in_memory else None

    def __len__(self) -> int:
        return len(self.positions)

    def batches(self, rng: np.random.Generator | None):
        order = rng.permutation(len(self.positions)) if rng is not None else np.arange(len(self.positions))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.data is not None:
                yield torch.from_numpy(self.data[idx]).permute(0, 3, 1, 2)
            else:
                x = torch.from_numpy(self.cache.read(self.positions[idx]))
                yield x.contiguous(memory_format=torch.channels_last)


def fits_in_ram(cache: FeatureCache, n: int, limit_bytes: float = IN_RAM_BYTES) -> bool:
    """Whether ``n`` images' float32 features of this cache fit in ``limit_bytes``."""
    c, h, w = cache.shape[1:]
    return n * c * h * w * 4 <= limit_bytes


def channel_subset(c: int, want: int | None, rng: np.random.Generator, key: str) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``want`` of f(x)'s ``c`` channels (all for None or c): PaDiM's
    reduction, which the Gaussian and the flow heads take as ``<head>.channels`` (named ``key`` in the error)."""
    want = want or c
    if want > c:
        raise DFRError(f"{key} is {want} but f(x) has {c} channels")
    return np.sort(rng.choice(c, size=want, replace=False)) if want < c else np.arange(c)


def write_fitted(model: torch.nn.Module, kind: str, params: dict, out_model: str | Path, out_history: str | Path,
                 out_info: str | Path | None, *, in_channels: int, grid: list[int], seconds: float, losses: dict,
                 parameters: int, history: list[dict] | None = None) -> None:
    """The files of a head other than the CAE: its sealed checkpoint (kind, state, f(x)'s channels and grid,
    format, provenance), its history (one row per epoch; without one, a single row for a fit in one pass, with
    the losses it reports, NaN where none) and its sidecar (model.json). The last epoch is the one kept."""
    state = model.state_dict()
    ckpt = {"kind": kind, "state_dict": state, "in_channels": in_channels, "grid": list(grid), "latent_dim": 0,
            "format": FORMATS["model"], **provenance(params)}
    check_space(out_model, sum(t.numel() * t.element_size() for t in state.values()))
    with atomic_path(out_model, suffix=".pt") as tmp:
        save_sealed(ckpt, tmp)
    history = pd.DataFrame(history or [{"epoch": 1, "train_loss": losses.get("train", np.nan),
                                        "val_loss": losses.get("val", np.nan), "seconds": seconds, "best": True}])
    with atomic_path(out_history, suffix=".csv") as tmp:
        history.to_csv(tmp, index=False)
    write_model_info(out_info, out_model, kind=kind, latent_dim=0, epochs_run=len(history),
                     epoch_saved=int(history.epoch.iloc[-1]), parameters=parameters)
