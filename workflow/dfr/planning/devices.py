"""Which device a job runs on, decided where the job is planned and named in the keys of what it makes.

Planning-side (no torch: importing it would initialise CUDA inside Snakemake). A feature cache or a model made
on a GPU is not bit-equal to one made on the CPU (other kernels, other summation orders), so the feature and
model keys name the device class, ``cuda``, when a job runs on a GPU (:func:`dfr.keys.device_params`; CPU keys
name none). ``device: auto`` is resolved by :func:`job_device` from where the job will run: for a local run,
the GPUs this machine shows; under a cluster executor, the GPUs each GPU stage's job asks for
(``resources.gpu``), never the submitting node's. The job then runs on the class its key names
(:func:`dfr.compute.resolve_device`), and refuses another.
"""

from __future__ import annotations

import functools
import os


def visible_gpus() -> int:
    """The GPUs a local run may use: CUDA_VISIBLE_DEVICES where set (its entries; "" or -1: none), else the
    GPUs that nvidia-smi lists (asked once per process: keys are planned many times), else 0."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return 0 if not ids or ids[0].startswith("-") else len(ids)
    return _smi_gpus()


@functools.lru_cache(maxsize=1)
def _smi_gpus() -> int:
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def job_device(device: str, gpus: int) -> str:
    """The config's ``device`` with ``auto`` resolved for jobs that get ``gpus`` GPUs: ``cuda`` with one or
    more, else ``cpu``. ``cpu``, ``cuda`` and ``cuda:N`` stay as they are."""
    if device == "auto":
        return "cuda" if gpus > 0 else "cpu"
    return device


def device_class(device: str) -> str:
    """``cpu`` or ``cuda``: what a key names. ``auto`` (not resolved for a run) means this machine's."""
    return "cuda" if job_device(device, visible_gpus() if device == "auto" else 0).startswith("cuda") else "cpu"
