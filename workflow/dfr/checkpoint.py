"""Checkpoint files (model.pt, bundle.pt): ``torch.save`` dicts of tensors and plain data that carry the sha256
of their own contents, so that a reader tells a garbled file from a good one (torch does not check the CRCs of
the archive it reads), and are read back weights-only (:func:`load_safely`): never unpickled."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import torch

from dfr.io import DFRError, check_format, remake_hint


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


def load_safely(path: str | Path, what: str, device: torch.device | str = "cpu", kind: str | None = None) -> dict:
    """A DFR checkpoint (``torch.save`` of a dict of tensors and plain data), loaded with ``weights_only``: a file
    that would build other objects, and so could run code, is refused unread. Then, in this order: it must be a
    dict, of ``kind``'s format version (``io.FORMATS``) when one is given, and match the checksum sealed in it."""
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise DFRError(f"{path}: {what} not found") from None
    except pickle.UnpicklingError as e:  # what weights_only refuses: a global that is not a tensor's
        why = next((ln.split("error:", 1)[1].strip() for ln in str(e).splitlines() if "Unpickler error:" in ln),
                   type(e).__name__)
        raise DFRError(f"{path}: refused: it holds objects other than tensors and plain data, and loading it "
                       f"could run code ({why[:300]}); this version of DFR writes none such (earlier ones did): "
                       f"remake it with the workflow ({remake_hint(path)})") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a truncated or foreign file
        raise DFRError(f"{path}: not a readable {what}, truncated or corrupt ({type(e).__name__}: {e}); "
                       + remake_hint(path)) from None
    if not isinstance(obj, dict):
        raise DFRError(f"{path}: not a DFR {what}; " + remake_hint(path))
    if kind is not None:  # before the checksum: another version may seal (or not) in another way
        check_format(path, kind, obj.get("format"))
    if "sha256" in obj and content_digest(obj) != obj["sha256"]:
        raise DFRError(f"{path}: {what} is corrupt: its contents do not match the checksum written with them; "
                       + remake_hint(path))
    return obj
