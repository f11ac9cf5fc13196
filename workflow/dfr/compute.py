"""The torch device a job computes on: chosen from the device class its artifact's key names
(:func:`dfr.planning.keys.device_params`), TF32 set explicitly, and recorded in what it writes. A leaf: it
imports nothing of the package but :mod:`dfr.io`."""

from __future__ import annotations

import os
import platform

import torch

from dfr.io import DFRError, record_device


def resolve_device(device: str, expect: str | None = None, amp: str | bool = "none") -> torch.device:
    """The torch device a job runs on, with TF32 set explicitly: off, unless autocast is on (``amp``), so that
    GPU convolutions and matrix products round as the key says (cuDNN allows TF32 by default on Ampere and
    later). ``expect``: the device class that the artifact's key names (:func:`dfr.keys.device_params`:
    ``cuda`` there, else ``cpu``); ``auto`` then runs on it, and another device is refused."""
    if device == "auto":
        device = expect or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DFRError(f"device {device!r} asked for, but no CUDA GPU is visible "
                       f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"
                       + (": this artifact's key names a GPU (planned with `device: auto` where the jobs get "
                          "one); plan on the machine that runs the jobs, or set `device: cpu`" if expect else ""))
    out = torch.device(device)
    if expect is not None and out.type != expect:
        raise DFRError(f"device {device!r}: this artifact's key names device class {expect!r}, so it is not "
                       f"made on {out.type!r} (set `device: auto` or `device: {expect}` in the config)")
    tf32 = amp not in ("none", False, None)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    record_device(device_record(out, tf32))
    return out


def device_record(device: torch.device, tf32: bool) -> dict:
    """What an artifact's provenance says of the device that made it."""
    out = {"type": device.type, "tf32": tf32, "torch": str(torch.__version__)}  # plain data: checkpoints load weights-only
    if device.type == "cuda":
        out.update(name=torch.cuda.get_device_name(device), cuda=str(torch.version.cuda),
                   cudnn=torch.backends.cudnn.version())
    else:
        out.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return out
