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
