"""What a job needs and what it used: memory and runtime estimates for the rules, measured peak RSS.

The Snakemake rules declare ``mem_mb`` and ``runtime`` from these functions, computed from what a job
processes (images, pixels, channels, epochs) and multiplied by the attempt number, so that a retry asks for
more. The constants are measured (see docs/benchmark.md, "Full-size rehearsal"): each estimate is a start-up
baseline (Python, torch, libraries) plus a per-unit cost with headroom.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from dfr.planning import heads, keys, plan, workload

MB = 2**20


def threads_default() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)



# ---- per rule: memory (MB) and runtime (minutes) of the first attempt ----
# Baselines are measured peaks of each stage on a tiny input (the interpreter and its libraries); per-unit
# costs follow from the data structures each stage holds, with headroom.

BASE_MB = {"light": 150, "torch": 850}  # measured: synthetic 70-290 MB; torch stages 650-800 MB
BACKBONE_MB = {"resnet18": 60, "resnet34": 100, "resnet50": 120, "wide_resnet50_2": 300,
               "tf_efficientnet_lite0": 40, "tf_efficientnet_lite1": 50, "tf_efficientnet_lite2": 60}
# GFLOP per 224² image up to layer3 / blocks[4] (torch.utils.flop_counter, the bench's measure)
BACKBONE_GFLOP = {"resnet18": 2.4, "resnet34": 4.9, "resnet50": 6.6, "wide_resnet50_2": 17.5,
                  "tf_efficientnet_lite0": 0.55, "tf_efficientnet_lite1": 0.8, "tf_efficientnet_lite2": 1.1}
# Runtime limits: a job's work estimated from rates measured on this project's machine (2 CPU cores), plus its
# start-up (the interpreter, torch's import, reading its inputs: 5-6 s for a torch stage here, about 1 s for a
# light one), times one stated safety factor; Snakemake doubles it on each retry (profiles: retries). The
# start-up allowance is the config's resources.start_s (default START_S; raise it where nodes import torch
# from a slow shared filesystem).
START_S = 10.0
SAFETY = math.sqrt(3)  # the geometric middle of [1x, 3x] the estimate (see limit_minutes)
CPU_GFLOPS = 40.0  # a conservative sustained rate for the runtime limits (measured: 150-230 on 2 cores)
MEM_GBPS = 4.0  # streaming through RAM: the coreset's greedy loop measured 7.5 GB/s on 2 idle cores, 3.3 beside another job
DECODE_S_PER_MPIXEL = 0.06  # PNG/JPEG decode + resize, one core, with headroom (measured ~0.035)
# Rates of the light stages, per megapixel of the images they read or write, fitted to the full-size MVTec-shaped
# rehearsal's records (2026-12-07, 181 jobs, the machine in a slow phase): the estimate is about the measured work
# there, SAFETY gives the margin (before: 2-5x the measured work, so every such job declared more than 3x its time)
INDEX_S_PER_MPIXEL = 0.015  # the index opens every image and mask (measured 0.003-0.022 s per megapixel)
SYNTHETIC_S_PER_MPIXEL = 0.3  # drawing and writing an image with its mask (measured 0.16-0.32)
METRICS_S_PER_PIXEL = 0.15e-6  # the exact pixel metrics, per test and held-out pixel (measured 0.11-0.2e-6)
# and to the MVTec-AD-2-shaped rehearsal's (2026-12-07, 106 jobs at 2.3-5 megapixels per image)
PLOT_S_PER_MPIXEL = 0.6  # one example row drawn and saved (measured 0.4-0.6 s per megapixel; was 2)
SUBMISSION_S_PER_MPIXEL = 0.12  # a private image decoded, its map upsampled, TIFF and PNG encoded (0.1-0.15)
ARCHIVE_S_PER_MPIXEL = 0.02  # gzip of the submission's TIFFs: 0.017-0.019 s per megapixel of the rehearsal's maps
# (two runs); 0.036 for a smooth random map (sizes: 0.39 and 1.5 MB per megapixel), 1.8x this, more than the
# limit's √3 once the work outweighs the start-up: such maps could outrun the first attempt (a retry doubles
# it); 0.04 declared 2 minutes for the rehearsal's 14-16 s


IN_RAM_BYTES = 2 * 2**30  # a fit holds its images' features in RAM up to this size, else streams them (dfr.heads.common)
READ_BATCH = 16  # images a one-pass fit or its maps read from the feature cache at a time


def geometry(cfg: dict) -> tuple[int, int]:
    """(fused channels C, locations h·w) of f(x), from the hooked layers as the keys derive them
    (:func:`dfr.planning.keys.fused_channels`, :func:`dfr.planning.keys.grid_side`); a layer these tables do
    not know: 1536 channels at stride 8."""
    side = keys.grid_side(cfg) or -(-cfg["data"]["image_size"] // 8)
    return keys.fused_channels(cfg) or 1536, side * side


@dataclass(frozen=True)
class Job:
    """What a head's job processes, for its estimate (:meth:`dfr.planning.heads.Head.estimate`): the config, the
    rule (``train`` or ``maps``), f(x)'s channels and locations, the category's workload and its held-out image
    count (:func:`dfr.planning.workload.held_out`), and which category it is."""

    cfg: dict
    rule: str
    channels: int
    locations: int
    wl: workload.Workload
    held_out: int
    dataset: str | None = None
    category: str | None = None

    @property
    def n_fit(self) -> int:
        """The images the model is fitted on: the training images less the held-out ones."""
        return max(1, self.wl.n_train - self.held_out)


def model_file_mb(cfg: dict, wl: workload.Workload) -> float:
    """The size of a model file in MB (its head's :meth:`~dfr.planning.heads.Head.file_mb`) for a category of
    this workload."""
    c, hw = geometry(cfg)
    n_fit = Job(cfg, "train", c, hw, wl, workload.held_out(cfg, wl)).n_fit
    return heads.get(cfg["model"]).file_mb(cfg, c, hw, n_fit)


def limit_minutes(work_s: float, start_s: float = START_S) -> int:
    """A job's runtime limit in whole minutes, at least one: the whole minute nearest ``SAFETY`` times its
    start-up and estimated work ``e``, nearest on a log scale. Since SAFETY is √3, the middle of [e, 3e] on
    that scale, this is the whole minute that leaves the most room both ways: the job may run up to D/e
    times longer than estimated, or 3e/D times shorter, and still be within "at least its time, at most 3x"."""
    e = start_s + work_s
    target = SAFETY * e / 60
    m = max(1, math.floor(target))
    if target * target > m * (m + 1):  # nearer m + 1 than m on a log scale (their geometric mean)
        m += 1
    return m


def estimate(cfg: dict, rule: str, dataset: str | None = None, category: str | None = None,
             split: str | None = None) -> dict[str, int]:
    """``{"mem_mb": …, "runtime": …}`` that a job of ``rule`` asks for on its first attempt."""
    mem, seconds = _estimate(cfg, rule, dataset, category, split)
    floor = cfg.get("resources", {}).get("mem_mb_min", 0)
    return {"mem_mb": int(max(floor, mem * 1.25) + 0.5),
            "runtime": limit_minutes(seconds, cfg.get("resources", {}).get("start_s", START_S))}


def work_seconds(cfg: dict, rule: str, dataset: str | None = None, category: str | None = None,
                 split: str | None = None) -> float:
    """A job's estimated work in seconds on this project's reference machine (2 CPU cores), start-up apart."""
    return _estimate(cfg, rule, dataset, category, split)[1]


def _estimate(cfg: dict, rule: str, dataset: str | None, category: str | None,
              split: str | None) -> tuple[float, float]:
    """(memory in MB before headroom, work in seconds) of a job of ``rule``."""
    wl = workload.workload(cfg, dataset, category) if dataset and category else None
    c, hw = geometry(cfg)
    mp = (wl.max_image_pixels if wl else 0) / 1e6
    mem, seconds = float(BASE_MB["torch"]), 0.0
    if rule == "prepare_dataset":
        mem, seconds = BASE_MB["light"] + 500, 2 * 3600  # a multi-GB download and extraction: at least 20 MB/s
    elif rule == "synthetic":
        n = wl.n_train + wl.n_test + wl.n_private
        mem = BASE_MB["light"] + 160 * mp + 50  # float64 planes of one image
        seconds = n * SYNTHETIC_S_PER_MPIXEL * max(mp, 0.05)
    elif rule == "index":
        mem = BASE_MB["light"] + 40 * mp  # one decoded image at a time (no torch: measured 78 MB at 1 MP)
        seconds = (wl.n_train + wl.n_test) * INDEX_S_PER_MPIXEL * max(mp, 0.05)
    elif rule == "features":
        f = cfg["features"]
        n = wl.n_train if split == "train" else wl.n_test
        b, workers, size = f["batch_size"], f["num_workers"], cfg["data"]["image_size"]
        scale = (size / 224) ** 2
        act_mb = 25 * scale * (3 if f["backbone"] == "wide_resnet50_2" else 1)  # activations of one image
        decoded_mb = 16 * mp  # a decoded image and its RGB/resized copies
        mem = (BASE_MB["torch"] + BACKBONE_MB.get(f["backbone"], 300) + b * (act_mb + decoded_mb)
               + workers * (BASE_MB["light"] + 2 * b * decoded_mb))
        per_image = (DECODE_S_PER_MPIXEL * max(mp, 0.05) / max(1, workers)
                     + BACKBONE_GFLOP.get(f["backbone"], 20) * scale / CPU_GFLOPS)
        seconds = n * per_image
    elif rule == "pca":
        samples = min(cfg["pca"]["max_samples"], wl.n_train * hw)
        mem = BASE_MB["torch"] + samples * c * 24 / MB  # float32 sample, float64 copy, centred copy
        seconds = (2 * samples * c * c + 10 * c ** 3) / (CPU_GFLOPS * 1e9)
    elif rule in ("train", "maps"):  # the head's own estimate
        job = Job(cfg, rule, c, hw, wl, workload.held_out(cfg, wl), dataset, category)
        mem, seconds = heads.get(cfg["model"]).estimate(job)
    elif rule == "ensemble":  # every member's maps, z-scored and resized to the finest grid, in float64
        ms = plan.members(cfg) or [cfg]
        n, hw = wl.n_train + wl.n_test, max(geometry(m)[1] for m in ms)
        mem = BASE_MB["torch"] + n * hw * (4 * len(ms) + 8 + 8) / MB
    elif rule == "scores":
        mem = BASE_MB["torch"] + (wl.n_train + wl.n_test) * hw * 4 * 3 / MB
    elif rule == "metrics":
        eval_size = _eval_size(cfg, dataset)
        test_px = wl.n_test * eval_size ** 2 if eval_size else wl.test_pixels
        val_px = cfg["data"]["val_fraction"] * (wl.n_train * eval_size ** 2 if eval_size else wl.train_pixels)
        one = (eval_size ** 2 / 1e6 if eval_size else mp) * 24  # one image's map, mask, labels
        if cfg["thresholds"]["few_labels"] and max(cfg["thresholds"]["few_labels"]) > 0:
            # the evaluator, the validation pixels kept, and a copy of them with the labelled images' pixels
            # (dfr.metrics.few_label_pixel: up to max(k) images at a time)
            mem = BASE_MB["torch"] + (8 * test_px + 8 * val_px) / MB + (1 + max(cfg["thresholds"]["few_labels"])) * one
        else:
            mem = BASE_MB["torch"] + max(8 * test_px, 4 * val_px) / MB + one
        seconds = (test_px + val_px) * METRICS_S_PER_PIXEL
    elif rule == "plots":
        mem = BASE_MB["torch"] + 150 + 6 * 150 * mp  # matplotlib, and six example rows at full size
        seconds = 6 * PLOT_S_PER_MPIXEL * max(mp, 0.1)
    elif rule == "bundle":  # every member's model as loaded, and the bundle of them all being written
        mem += 2.5 * sum(model_file_mb(m, wl) for m in plan.members(cfg) or [cfg])
    elif rule == "submission_part":  # dfr.submission: the bundle scores a batch of private images at a time
        n = max(wl.n_private, 1)
        ms = plan.members(cfg) or [cfg]
        sets = {(m["features"]["backbone"], m["data"]["image_size"]) for m in ms}
        per_image = (SUBMISSION_S_PER_MPIXEL * max(mp, 0.05)  # decode, upsample, encode (TIFF and PNG)
                     + sum(BACKBONE_GFLOP.get(b, 20) * (sz / 224) ** 2 for b, sz in sets) / CPU_GFLOPS)
        for m in ms:
            per_image += work_seconds(m, "maps", dataset, category) / max(1, wl.n_train + wl.n_test)
        seconds = n * per_image
        models = sum(model_file_mb(m, wl) for m in ms)
        mem += 2.5 * models + sum(BACKBONE_MB.get(b, 300) for b, _ in sets) + 8 * 25 * len(sets) + 24 * mp
    elif rule == "submission":  # the categories' tars streamed into one .tar.gz
        mem = BASE_MB["light"] + 50
        private_mp = sum(w.n_private * w.max_image_pixels for w in (
            workload.workload(cfg, dataset, c) for c in cfg["datasets"][dataset]["categories"])) / 1e6
        seconds = private_mp * ARCHIVE_S_PER_MPIXEL
    elif rule == "study":  # every variant's metrics.json and model.json (KB each), and matplotlib
        mem, seconds = BASE_MB["torch"] + 300, 120
    elif rule in ("split", "tables", "study_manifest"):
        mem = BASE_MB["light"]
    else:
        raise KeyError(f"no resource estimate for rule {rule!r}")
    return mem, seconds


def _eval_size(cfg: dict, dataset: str) -> int | None:
    return cfg["datasets"][dataset].get("eval_size") or cfg["metrics"]["eval_size"]


def timing_estimate(cfgs: list[dict], timed: list[tuple[str, str]], timing: dict) -> dict[str, int]:
    """The study's timing job (dfr.timing): every variant in turn, one at a time, on ``timing["images"]`` test
    images of each timed category: the backbones and heads (each pass twice: whole, backbones alone; repeats and
    a warm-up), the decoding; memory for one variant's models, backbones, decoded images and a batch."""
    n, passes = timing["images"], 2 * timing["repeats"] + 1
    seconds, mem = 0.0, 0.0
    for cfg in cfgs:
        ms = plan.members(cfg) or [cfg]
        for dataset, category in timed:
            wl = workload.workload(cfg, dataset, category)
            per_image = DECODE_S_PER_MPIXEL * max(wl.max_image_pixels / 1e6, 0.05)
            sets = {(m["features"]["backbone"], m["data"]["image_size"]) for m in ms}
            per_image += passes * sum(BACKBONE_GFLOP.get(b, 20) * (s / 224) ** 2 for b, s in sets) / CPU_GFLOPS
            for m in ms:
                per_image += passes * work_seconds(m, "maps", dataset, category) / max(1, wl.n_train + wl.n_test)
            seconds += n * per_image
            models = sum(model_file_mb(m, wl) for m in ms)
            backbones = sum(BACKBONE_MB.get(b, 300) for b, _ in sets)
            batch = timing["batch"] * sum(25 * (s / 224) ** 2 for _, s in sets) + n * 3 * 4 * max(
                m["data"]["image_size"] for m in ms) ** 2 / MB
            mem = max(mem, BASE_MB["torch"] + 2.5 * models + backbones + batch + 16 * wl.max_image_pixels / MB)
    res = cfgs[0].get("resources", {}) if cfgs else {}
    return {"mem_mb": int(max(res.get("mem_mb_min", 0), mem * 1.25) + 0.5),
            "runtime": limit_minutes(seconds, res.get("start_s", START_S))}
