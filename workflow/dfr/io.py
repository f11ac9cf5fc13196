"""Atomic writes and provenance: nothing half-written is ever trusted by a rerun."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Iterator


class DFRError(RuntimeError):
    """An error a user can act on: the message names the file and what is wrong."""


# Versions of the artifacts' formats: an artifact records the version that wrote it, and a reader refuses
# another one with the command that remakes it (remake_hint).
# model 2 / bundle 2: tensors and plain data only, read with torch.load(weights_only=True); bundle 3: single
# models and ensembles alike (feature_sets, members, fusion: dfr.predict)
FORMATS = {"features": 1, "model": 2, "maps": 1, "bundle": 3}


def remake_hint(path: str | os.PathLike) -> str:
    """The command that remakes a damaged artifact and what follows from it. (Deleting it is not enough: a missing
    intermediate file is not remade while the files made from it are up to date.)"""
    return f"remake it: add --forcerun {path} to your snakemake command"


def check_format(path: str | os.PathLike, kind: str, found: object) -> None:
    """Raise a :class:`DFRError` unless an artifact's recorded format version is the one this code reads."""
    want = FORMATS[kind]
    if found != want:
        was = "no format version (written before versioning)" if found is None else f"format {found}"
        raise DFRError(f"{path}: {kind} file with {was}, this version of DFR reads format {want}; "
                       + remake_hint(path))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary is ``.<name>.<random><suffix>``: what a killed writer of the same artifact left behind is
    removed first (one job writes an artifact at a time), and the file gets the permissions the umask gives a
    new file (mkstemp's are 600: unreadable by the group on a shared filesystem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*"):
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def check_space(path: str | os.PathLike, nbytes: int) -> None:
    """Refuse, before writing, a file of ``nbytes`` that the filesystem's free space or the process's file-size
    limit (ulimit -f) cannot hold: HDF5 does not survive a write that fails half-way."""
    import resource

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    need = int(nbytes * 1.02) + (1 << 20)  # and the file's metadata
    if need > free:
        why = "no space left on the device"
    elif limit != resource.RLIM_INFINITY and need > limit:
        why = f"the file would exceed the size limit ({limit / 2**30:.2f} GB)"
    else:
        return
    raise DFRError(no_space(path, why, free, path.parent, need))


def no_space(path: str | os.PathLike, why: str, free: int, where: str | os.PathLike, need: int | None = None) -> str:
    """The one line a write that the disk (or the file-size limit) cannot hold ends in."""
    needed = f"{need / 2**30:.2f} GB needed, " if need is not None else ""
    return (f"{path}: could not be written: {why} ({needed}{free / 2**30:.2f} GB free on the filesystem of {where}); "
            "free some space (or raise the limit) and rerun: nothing half-written is kept")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_model_info(out_info: str | os.PathLike | None, out_model: str | os.PathLike, **info: Any) -> None:
    """A model's sidecar (``model.json``): its kind, size, parameters and epochs, what a study reads of a
    model without loading it."""
    if out_info is not None:
        write_json(out_info, {**info, "bytes": Path(out_model).stat().st_size})


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DFRError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DFRError(f"{path}: not valid JSON, truncated or corrupt ({e}); {remake_hint(path)}") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def versions() -> dict[str, str]:
    """Versions of the libraries that shape an artifact (recorded in every artifact)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    from dfr import __version__

    out["dfr"] = __version__
    from importlib import metadata

    for mod, dist in (("torch", "torch"), ("torchvision", "torchvision"), ("timm", "timm"), ("numpy", "numpy"),
                      ("h5py", "h5py"), ("sklearn", "scikit-learn"), ("scipy", "scipy"), ("pandas", "pandas"),
                      ("PIL", "pillow")):
        m = sys.modules.get(mod)  # the version actually loaded; else the installed one, without importing it
        if m is not None:
            out[mod] = str(getattr(m, "__version__", "unknown"))  # torch's is a TorchVersion: plain data only
        else:
            try:
                out[mod] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
    return out


_DEVICE: dict[str, Any] = {}


def record_device(info: dict[str, Any]) -> None:
    """The device this process computes on (:func:`dfr.compute.resolve_device` records it)."""
    _DEVICE.clear()
    _DEVICE.update(info)


def provenance(params: dict[str, Any]) -> dict[str, Any]:
    """What made an artifact: its parameters, the library versions and the device (its type, name, TF32 and
    the torch/CUDA/cuDNN versions; the CPU for a stage that computes no tensors on a device)."""
    return {"params": params, "versions": versions(), "device": device_info()}


def device_info() -> dict[str, Any]:
    """The device this process computed on (the CPU where no stage resolved one)."""
    return dict(_DEVICE) or {"type": "cpu", "name": platform.processor() or platform.machine()}
