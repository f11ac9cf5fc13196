"""Checkpoint files (model.pt, bundle.pt): ``torch.save`` dicts of tensors and plain data that carry the sha256
of their own contents, so that a reader tells a garbled file from a good one (torch does not check the CRCs of
the archive it reads)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch


def _digest(obj, h):
    """sha256 over a checkpoint's tensors (dtype, shape, bytes) and plain values, in key order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            if k != "sha256":
                h.update(f"K{k!r}".encode())
                _digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _digest(v, h)
    else:
        h.update(f"V{json.dumps(obj, sort_keys=True, default=str)}".encode())
    return h


def save_sealed(obj: dict, path: str | Path) -> None:
    """``torch.save`` a checkpoint dict with the sha256 of its contents inside, so that a later read can tell
    a garbled file (torch does not check the archive's CRCs) from a good one."""
    torch.save({**obj, "sha256": content_digest(obj)}, path)


def content_digest(obj: dict) -> str:
    """The hex sha256 of a checkpoint dict's contents (its own ``sha256`` entry left out)."""
    return _digest(obj, hashlib.sha256()).hexdigest()


def write_fitted(model: torch.nn.Module, kind: str, params: dict, out_model: str | Path, out_history: str | Path,
                 out_info: str | Path | None, *, in_channels: int, grid: list[int], seconds: float, losses: dict,
                 parameters: int, history: list[dict] | None = None) -> None:
    """The files of a head other than the CAE: its sealed checkpoint (kind, state, f(x)'s channels and grid,
    format, provenance), its history (one row per epoch; without one, a single row for a fit in one pass, with
    the losses it reports, NaN where none) and its sidecar (model.json). The last epoch is the one kept."""
    import numpy as np
    import pandas as pd

    from .io import FORMATS, atomic_path, check_space, provenance, write_model_info

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
