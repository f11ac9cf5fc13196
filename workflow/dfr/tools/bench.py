"""Benchmark: every stage's throughput and peak memory, next to the machine's own matmul GFLOP/s.

    python -m dfr.bench                      # ResNet50 at 224, a synthetic category of 64 images
    python -m dfr.bench --images 200 --backbone tf_efficientnet_lite0

Absolute times on shared machines are noise; the ratios printed are measured side by side in one run.
Each stage runs in a fresh process, so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _child(fn, kwargs, q):
    from dfr.measure import peak_rss_mb

    try:
        out = fn(**kwargs)
        out["peak_rss_mb"] = peak_rss_mb()
        q.put(out)
    except BaseException as e:  # noqa: BLE001 - report any failure to the parent
        import traceback

        q.put({"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"})


def run_isolated(fn, **kwargs) -> dict:
    """Run ``fn(**kwargs)`` in a fresh (spawned) process; returns its dict plus its peak RSS."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, kwargs, q))
    p.start()
    out = q.get()
    p.join()
    if "error" in out:
        raise RuntimeError(out["error"])
    return out


def _best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# ---- stages (each runs in its own process) ----

def stage_matmul(threads: int, n: int = 2048, device: str = "cpu") -> dict:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run():
        for _ in range(5):
            a @ b
        sync()

    run()
    dt = _best_time(run, 5)
    return {"gflops": 5 * 2 * n ** 3 / dt / 1e9}


def stage_decode(paths: list[str], image_size: int, workers: int, big_png: str) -> dict:
    import torch

    from dfr.stages.features import ImageDataset, Preprocess
    from dfr.stages.features import _one_thread

    torch.set_num_threads(1)
    pre = Preprocess(image_size, True)
    ds = ImageDataset(paths, pre)
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    single = len(ds) / (time.perf_counter() - t)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=workers, worker_init_fn=_one_thread)
    t = time.perf_counter()
    for _ in loader:
        pass
    multi = len(ds) / (time.perf_counter() - t)
    big = ImageDataset([big_png] * 8, pre)
    big_s = _best_time(lambda: [big[i] for i in range(len(big))], 2) / len(big)
    return {"images_per_s_1proc": single, "images_per_s_workers": multi, "workers": workers,
            "mvtec_size_png_ms": 1000 * big_s}


def stage_backbone(backbone: str, layers: list[str], image_size: int, batch: int, threads: int,
                   device: str, channels_last: bool) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dfr.stages import backbones, features

    torch.set_num_threads(threads)
    dev = torch.device(device)
    model = backbones.build(backbone, "none").to(dev)
    x = torch.randn(batch, 3, image_size, image_size, device=dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = {}
    for name, truncate in (("truncated", True), ("full", False)):
        fx = features.FeatureExtractor(model, layers, truncate=truncate)
        with torch.inference_mode():
            with FlopCounterMode(display=False) as fc:
                fx(x[:1])
            flops = fc.get_total_flops()

            def run():
                fx(x)
                sync()

            run()
            dt = _best_time(run, 3)
        fx.remove_hooks()
        out[name] = {"gflop_per_image": flops / 1e9, "images_per_s": batch / dt, "gflops": flops * batch / dt / 1e9}
    return out


def stage_features(index: str, out: str, params: dict, threads: int) -> dict:
    import torch

    from dfr.stages import features

    torch.set_num_threads(threads)
    st = features.extract(index, "train", out, params)
    return {"images_per_s": st["images"] / st["seconds_loop"], "setup_seconds": st["seconds_setup"],
            "images_per_s_with_setup": st["images"] / (st["seconds_loop"] + st["seconds_setup"])}


def stage_hdf5(path: str, n: int, shape: list[int], batch: int) -> dict:
    import h5py

    from dfr.stages.cache import FeatureCache

    rng = np.random.default_rng(0)
    block = rng.standard_normal((batch, *shape)).astype(np.float16)
    mb = n * np.prod(shape) * 2 / 2**20
    t = time.perf_counter()
    import pandas as pd

    from dfr.stages.cache import write_cache_meta

    with h5py.File(path, "w") as f:
        ds = f.create_dataset("features", shape=(n, *shape), dtype=np.float16, chunks=(1, *shape))
        for s in range(0, n, batch):
            ds[s:s + batch] = block[: min(batch, n - s)]
        write_cache_meta(f, pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "defect": "", "path": "",
                                          "mask_path": "", "label": 0, "height": 0, "width": 0}), {})
    write = mb / (time.perf_counter() - t)
    os.sync() if hasattr(os, "sync") else None
    with FeatureCache(path) as c:
        t = time.perf_counter()
        for s in range(0, n, batch):
            c.read(np.arange(s, min(n, s + batch)))
        seq = mb / (time.perf_counter() - t)
        order = rng.permutation(n)
        t = time.perf_counter()
        for s in range(0, n, batch):
            c.read(order[s:s + batch])
        shuffled = mb / (time.perf_counter() - t)
    return {"write_mb_s": write, "read_seq_mb_s": seq, "read_shuffled_mb_s": shuffled, "size_mb": mb}


def stage_train(features: str, split: str, latent: int, batch: int, threads: int, device: str,
                in_memory: bool, epochs: int = 3) -> dict:
    import torch

    from dfr.heads.cae import model as cae

    torch.set_num_threads(threads)
    model_path = Path(features).with_name(f"bench_{in_memory}.pt")
    hist = Path(features).with_name(f"bench_{in_memory}.csv")
    params = {"latent_dim": latent, "normalize": True, "batchnorm": True, "epochs": epochs, "batch_size": batch,
              "lr": 1e-3, "early_stopping": 0, "seed": 0, "device": device, "in_memory": in_memory}
    import pandas as pd

    cae.train(features, split, model_path, hist, params)
    h = pd.read_csv(hist)
    n = len(json.loads(Path(split).read_text())["train"])
    return {"epoch_seconds": float(h.seconds.min()), "images_per_s": n / float(h.seconds.min()), "n_train": n}


def stage_scoring(model: str, features: str, split: str, threads: int, device: str, batch: int) -> dict:
    import torch

    from dfr.stages import scoring

    torch.set_num_threads(threads)
    out = Path(features).with_name("bench_maps.h5")
    t = time.perf_counter()
    scoring.anomaly_maps(model, features, features, split, out, {"device": device, "batch_size": batch})
    m = scoring.Maps(out)
    scoring.top_k_score(m.A, 10)
    dt = time.perf_counter() - t
    return {"images_per_s": len(m.A) / dt}


def stage_predict(model: str, fparams: dict, paths: list[str], out: str, threads: int, device: str,
                  batch: int, workers: int) -> dict:
    """dfr predict end to end: decode, backbone, CAE, scores, and a heatmap overlay and mask per image."""
    import torch

    from dfr.stages import predict
    from dfr.io import write_json

    torch.set_num_threads(threads)
    metrics = Path(out) / "metrics.json"
    write_json(metrics, {"thresholds": {"val_mean_std": {"threshold": 1.0}}, "pixel": {"t_pixel": 1.0}})
    bundle = Path(out) / "bundle.pt"
    predict.write_bundle([model], metrics, bundle, {"features": [fparams], "top_k": 10})
    t = time.perf_counter()
    predict.predict(bundle, paths, Path(out) / "predict", device=device, batch_size=batch, num_workers=workers)
    return {"images_per_s": len(paths) / (time.perf_counter() - t)}


def cae_gflop_per_image(c: int, d: int, hw: int) -> float:
    """Forward + backward (≈ 3× forward) FLOPs of one training image through the CAE's 1×1 convs."""
    from dfr.heads.cae import cae_gflop

    return 3 * cae_gflop(c, d, hw)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dfr.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=128, help="training images of the synthetic category")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--layers", nargs="+", default=None)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=None,
                   help="backbone batch (default 8 on a CPU, where smaller batches stay in cache; 64 on a GPU)")
    p.add_argument("--cae-batch-size", type=int, default=16, help="CAE training batch (the paper's 16)")
    p.add_argument("--latent", type=int, default=100, help="CAE latent dimension d")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader decode workers")
    p.add_argument("--device", default="auto")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--gpu-tflops", type=float, default=200.0,
                   help="achieved TFLOP/s assumed for the GPU projection (fp32/tf32 convs and GEMMs)")
    p.add_argument("--gpu-decode-workers", type=int, default=16, help="CPU decode workers on a GPU node")
    p.add_argument("--workdir", default=None, help="keep the benchmark's files here (default: a temp folder)")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)

    from dfr.stages import data, synthetic

    from dfr import compute, shapes

    device = str(compute.resolve_device(a.device))
    a.batch_size = a.batch_size or (8 if device == "cpu" else 64)
    layers = a.layers or shapes.DEFAULT_LAYERS[a.backbone]
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="dfr-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    print(f"# DFR benchmark: {a.backbone} {layers} at {a.image_size}², {a.images} images, backbone batch {a.batch_size}, "
          f"CAE batch {a.cae_batch_size}, "
          f"{a.threads} threads, device {device}, work dir {work}", flush=True)

    synthetic.generate_category(work, "weave", n_train=a.images, n_test_good=4, n_test_defect=1, seed=0)
    idx = work / "index.csv"
    df = data.index_category(work, "weave")
    data.write_index(df, idx)
    split = work / "split.json"
    data.write_split(idx, split, 0.0, 0)
    paths = df[df.split == "train"].path.tolist()
    R: dict = {"config": vars(a) | {"device": device, "layers": layers}}

    R["matmul"] = run_isolated(stage_matmul, threads=a.threads, device=device)
    peak = R["matmul"]["gflops"]
    print(f"matmul fp32: {peak:.1f} GFLOP/s", flush=True)
    from PIL import Image

    big_png = work / "mvtec_size.png"  # MVTec AD's images are 700² to 1024² PNGs
    Image.open(paths[0]).convert("RGB").resize((1024, 1024), Image.BICUBIC).save(big_png)
    R["decode"] = run_isolated(stage_decode, paths=paths, image_size=a.image_size, workers=a.workers,
                               big_png=str(big_png))
    cl_modes = {"auto": [False, True], "on": [True], "off": [False]}[a.channels_last]
    bb = {}
    for cl in cl_modes:
        bb[cl] = run_isolated(stage_backbone, backbone=a.backbone, layers=layers, image_size=a.image_size,
                              batch=a.batch_size, threads=a.threads, device=device, channels_last=cl)
    best_cl = max(bb, key=lambda k: bb[k]["truncated"]["gflops"])
    R["backbone"] = {**bb[best_cl], "channels_last": best_cl,
                     "other_layout_gflops": {str(k): v["truncated"]["gflops"] for k, v in bb.items()}}
    print(f"backbone: {R['backbone']['truncated']['images_per_s']:.1f} images/s", flush=True)
    fparams = {"backbone": a.backbone, "weights": "none", "layers": layers, "pool": 3, "image_size": a.image_size,
               "normalize": True, "dtype": "float16", "batch_size": a.batch_size, "num_workers": a.workers,
               "device": device, "channels_last": best_cl}
    feats = work / "train.h5"
    R["features"] = run_isolated(stage_features, index=str(idx), out=str(feats), params=fparams, threads=a.threads)
    import h5py

    with h5py.File(feats) as f:
        shape = list(f["features"].shape[1:])
    R["hdf5"] = run_isolated(stage_hdf5, path=str(work / "hdf5_bench.h5"), n=max(a.images, 64), shape=shape,
                             batch=a.batch_size)
    R["train_ram"] = run_isolated(stage_train, features=str(feats), split=str(split), latent=a.latent,
                                  batch=a.cae_batch_size, threads=a.threads, device=device, in_memory=True)
    R["train_stream"] = run_isolated(stage_train, features=str(feats), split=str(split), latent=a.latent,
                                     batch=a.cae_batch_size, threads=a.threads, device=device, in_memory=False)
    R["predict"] = run_isolated(stage_predict, model=str(work / "bench_True.pt"), fparams={
        k: fparams[k] for k in ("backbone", "weights", "layers", "pool", "image_size", "normalize", "dtype")},
        paths=paths, out=str(work), threads=a.threads, device=device, batch=a.batch_size, workers=a.workers)
    R["scoring"] = run_isolated(stage_scoring, model=str(work / "bench_True.pt"), features=str(feats),
                                split=str(split), threads=a.threads, device=device, batch=a.cae_batch_size)

    # ---- derived figures ----
    c, h, w = shape
    cae_gf = cae_gflop_per_image(c, a.latent, h * w)
    tr = R["backbone"]["truncated"]
    full = R["backbone"]["full"]
    train_ips = max(R["train_ram"]["images_per_s"], R["train_stream"]["images_per_s"])
    decode_s = R["decode"]["mvtec_size_png_ms"] / 1000  # one core's time for an MVTec-sized PNG
    backbone_s = 1 / tr["images_per_s"]
    # an "original DFR" epoch decodes and recomputes backbone features for every batch; decoding overlaps
    # with compute in DataLoader workers, so the slower of the two sets the pace
    cache_s = 1 / max(R["train_ram"]["images_per_s"], R["train_stream"]["images_per_s"])
    recompute_s = max(decode_s / max(1, a.workers - 1), backbone_s) + cache_s
    if device == "cpu":
        recompute_s = decode_s / max(1, a.workers) + backbone_s + cache_s  # all share the same cores
    gpu_flops = a.gpu_tflops * 1e12
    gpu_cae_s = cae_gf * 1e9 / gpu_flops
    gpu_copy_s = c * h * w * 4 / 20e9  # host-to-device copy of one image's features (cache in RAM)
    gpu_recompute_s = max(decode_s / a.gpu_decode_workers, tr["gflop_per_image"] * 1e9 / gpu_flops) + gpu_cae_s
    gpu_cache_s = max(gpu_copy_s, gpu_cae_s)
    R["derived"] = {
        "backbone_fraction_of_matmul": tr["gflops"] / peak,
        "truncated_speedup_vs_full": tr["images_per_s"] / full["images_per_s"],
        "cae_gflop_per_image": cae_gf,
        "cae_gflops": cae_gf * train_ips,
        "cae_fraction_of_matmul": cae_gf * train_ips / peak,
        "recompute_vs_cache_epoch_cpu": recompute_s / cache_s,
        "recompute_vs_cache_epoch_gpu_projected": gpu_recompute_s / gpu_cache_s,
    }
    # projected full MVTec AD benchmark: 3,629 train + 1,725 test images, 15 categories, 50 epochs
    n_train, n_test = 3629, 1725
    feat_ips = R["features"]["images_per_s"]
    R["derived"]["mvtec_projection_min"] = (
        (n_train + n_test) / feat_ips + 50 * n_train * 0.9 / train_ips + n_test / R["scoring"]["images_per_s"]) / 60
    R["seconds"] = time.perf_counter() - t_all
    _print_table(R)
    if a.json:
        Path(a.json).write_text(json.dumps(R, indent=2, default=float))
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _print_table(R: dict) -> None:
    d = R["derived"]
    peak = R["matmul"]["gflops"]
    rows = [
        ("machine: fp32 matrix multiply", f"{peak:.1f} GFLOP/s", "the physical limit used below", ""),
        ("image decode + preprocess", f"{R['decode']['images_per_s_1proc']:.1f} img/s (1 proc)",
         f"{R['decode']['images_per_s_workers']:.1f} img/s with {R['decode']['workers']} workers; "
         f"{R['decode']['mvtec_size_png_ms']:.0f} ms per 1024² PNG", "-"),
        ("backbone, truncated after last hook",
         f"{R['backbone']['truncated']['images_per_s']:.1f} img/s",
         f"{R['backbone']['truncated']['gflops']:.1f} GFLOP/s ({R['backbone']['truncated']['gflop_per_image']:.2f} "
         f"GFLOP/img, channels_last={R['backbone']['channels_last']})", "-"),
        ("backbone, untruncated, same hooks", f"{R['backbone']['full']['images_per_s']:.1f} img/s",
         f"{R['backbone']['full']['gflops']:.1f} GFLOP/s", "-"),
        ("features stage end to end (decode+backbone+HDF5)", f"{R['features']['images_per_s']:.1f} img/s",
         f"after {R['features']['setup_seconds']:.1f} s set-up (model build, first batch)",
         f"{R['features']['peak_rss_mb']:.0f} MB"),
        ("HDF5 cache write", f"{R['hdf5']['write_mb_s']:.0f} MB/s", f"{R['hdf5']['size_mb']:.0f} MB file",
         f"{R['hdf5']['peak_rss_mb']:.0f} MB"),
        ("HDF5 cache read (sequential / shuffled)",
         f"{R['hdf5']['read_seq_mb_s']:.0f} / {R['hdf5']['read_shuffled_mb_s']:.0f} MB/s", "", ""),
        ("CAE training epoch, cache in RAM", f"{R['train_ram']['images_per_s']:.1f} img/s",
         f"{d['cae_gflop_per_image'] * R['train_ram']['images_per_s']:.1f} GFLOP/s",
         f"{R['train_ram']['peak_rss_mb']:.0f} MB"),
        ("CAE training epoch, streamed from HDF5", f"{R['train_stream']['images_per_s']:.1f} img/s",
         f"{d['cae_gflop_per_image'] * R['train_stream']['images_per_s']:.1f} GFLOP/s",
         f"{R['train_stream']['peak_rss_mb']:.0f} MB"),
        ("scoring (A(x) + top-k) from cache", f"{R['scoring']['images_per_s']:.1f} img/s", "",
         f"{R['scoring']['peak_rss_mb']:.0f} MB"),
        ("dfr predict end to end (decode→score→PNGs)", f"{R['predict']['images_per_s']:.1f} img/s",
         "bundle; heatmap overlay + mask per image", f"{R['predict']['peak_rss_mb']:.0f} MB"),
    ]
    print()
    print(f"| {'stage':48} | {'throughput':26} | {'detail':58} | peak RSS |")
    print(f"|{'-' * 50}|{'-' * 28}|{'-' * 60}|---------:|")
    for r in rows:
        print(f"| {r[0]:48} | {r[1]:26} | {r[2]:58} | {r[3]:>8} |")
    print()
    print("ratios (measured side by side in this run):")
    print(f"  backbone GFLOP/s / matmul GFLOP/s              {d['backbone_fraction_of_matmul']:.2f}  (target >= 0.6)")
    print(f"  CAE training GFLOP/s / matmul GFLOP/s          {d['cae_fraction_of_matmul']:.2f}  (target >= 0.6)")
    print(f"  truncated / untruncated backbone speed         {d['truncated_speedup_vs_full']:.2f}x")
    print(f"  epoch recomputing features / epoch from cache  {d['recompute_vs_cache_epoch_cpu']:.1f}x on this CPU, "
          f"{d['recompute_vs_cache_epoch_gpu_projected']:.1f}x projected on a GPU "
          f"({R['config']['gpu_tflops']:.0f} TFLOP/s, {R['config']['gpu_decode_workers']} decode workers)")
    print(f"  projected full MVTec AD run (15 categories, 50 epochs) on this device: "
          f"{d['mvtec_projection_min']:.0f} min")
    print(f"benchmark wall time: {R['seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
