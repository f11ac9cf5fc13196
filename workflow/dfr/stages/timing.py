"""Speeds that can be compared: a warm, in-process timing of what ``dfr predict`` runs.

A job's wall time (Snakemake's benchmark record) includes the interpreter's, torch's and the weights' start-up,
which dominates on small categories and grows with the number of jobs a configuration has, not with its cost
per image. The speeds that choose something or are published come from here instead: in one process, on one
machine, every variant of a study (or every bundle given) runs on the same test images, decoded and
preprocessed once, in batches of the same size, after a warm-up batch; the best of ``repeats`` passes counts
(a study's passes interleaved across its variants, :func:`study`).

Per variant it reports images/s of
* ``score_ips``: f(x) (each feature setting's backbone once), every member's A(x), the ensemble's fusion and
  s(x): what a deployed model costs per image once the image is decoded;
* ``backbone_ips``: the backbones alone (the floor any head on their features pays);
* ``decode_ips``: decoding and preprocessing the images (the same for every variant of one image size);
and records the machine: device and its name, threads, torch and its cuDNN/MKL, the CPU model.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from dfr.stages.data import read_index
from dfr.stages.features import load_image
from dfr.io import DFRError, atomic_path, versions, write_json
from dfr.stages.predict import Predictor, assemble, load_bundle
from dfr.planning.resources import threads_default

log = logging.getLogger(__name__)

# The code version of the timing (what it measures and how): dfr.keys reads it (without importing this module).
CODE_VERSIONS = {"timing": 2}  # 2: a study's variants timed in interleaved rounds


def machine(device: torch.device) -> dict:
    """What the timing ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    out = {"device": device.type, "threads": torch.get_num_threads(), "cpu": cpu, "host": platform.node(),
           "cores_visible": threads_default(),
           "torch": torch.__version__, "mkl": torch.backends.mkl.is_available()}
    if device.type == "cuda":
        out.update(name=torch.cuda.get_device_name(device), cudnn=torch.backends.cudnn.version())
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_predictor(pred: Predictor, batches: list[tuple[torch.Tensor, ...]], repeats: int) -> dict:
    """Seconds of the best of ``repeats`` passes over ``batches`` (after one warm-up batch): the whole scoring,
    and the backbones alone."""
    device = pred.device
    pred.scores(pred.maps(batches[0]))  # warm-up: allocations, oneDNN/cuDNN kernels chosen
    whole, backbone = [], []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for xs in batches:
            pred.scores(pred.maps(xs))
        _sync(device)
        whole.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for xs in batches:
                for i, extractor, amp, _ in pred.sets:
                    x = xs[i].to(device).contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                        extractor(x)
        _sync(device)
        backbone.append(time.perf_counter() - t0)
    return {"score_s": min(whole), "backbone_s": min(backbone)}


def time_variants(variants: list[dict], images: list[str], batch: int, repeats: int, device: str = "auto") -> list[dict]:
    """Each variant (``name`` and a runnable bundle dict, :func:`dfr.predict.assemble`'s) timed on ``images``."""
    if not images:
        raise DFRError("no images to time on")
    rows = []
    for v in variants:
        pred = Predictor(v["bundle"], device)
        t0 = time.perf_counter()
        decoded = [pred.preprocess(load_image(p)) for p in images]
        decode_s = time.perf_counter() - t0
        batches = [tuple(torch.stack([d[j] for d in decoded[i:i + batch]]) for j in range(len(pred.inputs)))
                   for i in range(0, len(decoded), batch)]
        t = time_predictor(pred, batches, repeats)
        n = len(images)
        rows.append({"variant": v["name"], "images": n, "batch": batch, "repeats": repeats,
                     "score_ips": n / t["score_s"], "backbone_ips": n / t["backbone_s"],
                     "decode_ips": n / decode_s, "members": len(pred.members), "feature_sets": len(pred.sets),
                     **machine(pred.device)})
        log.info("%s: %.1f images/s scored (backbones alone %.1f), %.1f decoded", v["name"], rows[-1]["score_ips"],
                 rows[-1]["backbone_ips"], rows[-1]["decode_ips"])
        del pred
    return rows


def test_images(index_csv: str | Path, n: int) -> list[str]:
    """The first ``n`` test images of a category's index, in its order."""
    idx = read_index(index_csv)
    paths = idx[idx.split == "test"].path.tolist()[:n]
    if not paths:
        raise DFRError(f"{index_csv}: no test images to time on")
    return paths


def study(manifest: dict, out_csv: str | Path, params: dict, device: str = "auto",
          weights_files: dict | None = None) -> pd.DataFrame:
    """Time every variant of a study on each dataset's first category (the manifest's ``timing`` entries: its
    models, fused maps and feature settings), in this one process. Writes one row per variant x dataset.

    The passes are interleaved: ``repeats`` rounds, each timing one pass of every variant in turn, and each
    variant keeps its best round. A machine whose speed drifts during the timing (another tenant, the clock)
    then slows or speeds every variant alike, where timing the variants one after another would charge the
    drift to whichever ran during it."""
    jobs = []
    for v in manifest["variants"]:
        for t in v["timing"]:
            wfs = [(weights_files or {}).get(fp["weights"]) for fp in t["features"]]
            bundle = assemble(t["models"], {"features": t["features"], "weights_files": wfs, "top_k": t["top_k"],
                                            "border": t["border"]}, t.get("maps"))
            jobs.append(({"name": v["name"], "bundle": bundle}, test_images(t["index"], params["images"]), t))
    best: dict[int, dict] = {}
    for _ in range(params["repeats"]):
        for j, (variant, images, t) in enumerate(jobs):
            (row,) = time_variants([variant], images, params["batch"], 1, device)
            if j not in best:
                best[j] = {**row, "repeats": params["repeats"], "dataset": t["dataset"], "category": t["category"]}
            else:
                for k in ("score_ips", "backbone_ips", "decode_ips"):
                    best[j][k] = max(best[j][k], row[k])
    df = pd.DataFrame([best[j] for j in range(len(jobs))])
    with atomic_path(out_csv, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return df


def bundles(paths: list[str], images: list[str], out_json: str | Path, batch: int = 8, repeats: int = 3,
            device: str = "auto") -> list[dict]:
    """Time bundles (``dfr timing``): each on the same images, in one process; the figures into ``out_json``."""
    from dfr.stages.predict import image_paths

    files = [str(p) for p in image_paths(images)]
    rows = time_variants([{"name": str(p), "bundle": load_bundle(p)} for p in paths], files, batch, repeats,
                         device)
    write_json(out_json, {"rows": rows, "versions": versions()})
    return rows
