"""Full-size rehearsal of the benchmark, and what Snakemake's benchmark records say about any run.

    python -m dfr.rehearsal --configfile config/rehearsal.yaml --run    # make rehearsal: run, then report
    python -m dfr.rehearsal --configfile config/rehearsal-ad2.yaml --run   # MVTec AD 2's shape
    python -m dfr.rehearsal --configfile config/demo.yaml               # report on an earlier run

The rehearsal config generates synthetic categories shaped like MVTec AD's 15 (counts, sizes, grey-scale,
file formats: ``synthetic.shape``; or MVTec AD 2's 8, with its validation and private sets) and runs the
whole DAG on them with the offline EfficientNet-Lite0 backbone. The report reads every job's benchmark
record (``<results>/benchmarks/…tsv``: wall time, sampled peak RSS of the process tree) and the exact peak
RSS that each job logs, and prints per stage: jobs, total and longest wall time, the largest peak RSS
beside what that job declared (``mem_mb``); every job whose peak exceeded its declaration is listed and
makes the command fail. It then projects the real benchmark (MVTec AD + VisA, or MVTec AD 2 with its
submission; ResNet50, 50 epochs) on this machine, from the measured per-image and per-pixel costs and the
backbones' images/s measured here, and on one GPU node from stated assumptions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from dfr.planning import config as dfr_config
from dfr.planning import heads, layout, plan, resources, workload
from dfr import shapes
from dfr.planning.plan import members
from dfr.io import DFRError, read_json

STAGES = ["synthetic", "index", "features", "split", "pca", "train", "maps", "ensemble", "scores", "metrics",
          "plots", "bundle", "submission_part", "submission", "tables"]
PER_DATASET = ("tables", "submission")
MODEL_STAGES = ("features", "split", "pca", "train", "maps")  # an ensemble's members each run these
PEAK_RE = re.compile(r"peak RSS (\d+) MB")


def _bench_row(tsv: Path) -> dict:
    b = pd.read_csv(tsv, sep="\t")
    rss = pd.to_numeric(b["max_rss"], errors="coerce").max()
    return {"wall_s": float(b["s"].iloc[-1]), "sampled_rss_mb": float(rss) if rss == rss else 0.0}


def _log_peak(log: Path) -> float:
    if not log.is_file():
        return 0.0
    found = PEAK_RE.findall(log.read_text(errors="replace"))
    return float(found[-1]) if found else 0.0


def collect(cfg: dict, workdir: str | Path = ".") -> pd.DataFrame:
    """One row per job of this config that has a benchmark record: wall time, peak and declared memory.
    With an ensemble, every member's model jobs (each declared from the member's config) and the fusion."""

    wd = Path(workdir)
    rows, seen = [], set()
    ms = members(cfg)
    for d, ds in cfg["datasets"].items():
        jobs = [(r, None, None, cfg) for r in PER_DATASET]
        for c in ds["categories"]:
            jobs += [(r, c, s, m) for m in ms or [cfg] for r in MODEL_STAGES
                     for s in (("train", "test") if r == "features" else (None,))]
            jobs += [(r, c, None, cfg) for r in STAGES if r not in (*MODEL_STAGES, *PER_DATASET)]
        for rule, c, s, m in jobs:
            log = plan.log_paths(m, d, c or "", s or "")[rule]
            tsv = wd / layout.benchmark_path(log)
            if not tsv.is_file() or log in seen:  # members that share a cache, split or PCA ran it once
                continue
            seen.add(log)
            est = resources.estimate(m, rule, d, c, s) if c or rule in PER_DATASET else {}
            r = {"rule": rule, "dataset": d, "category": c, "split": s, **_bench_row(tsv),
                 "log_peak_mb": _log_peak(wd / log), "declared_mb": est.get("mem_mb"),
                 "declared_min": est.get("runtime")}
            r["peak_mb"] = max(r["sampled_rss_mb"], r["log_peak_mb"])
            rows.append(r)
    return pd.DataFrame(rows)


def stage_summary(jobs: pd.DataFrame) -> pd.DataFrame:
    out = []
    for rule in [s for s in STAGES if s in set(jobs.rule)]:
        j = jobs[jobs.rule == rule]
        top = j.loc[j.peak_mb.idxmax()]
        ratio = (_declared_s(j) / j.wall_s.clip(lower=0.1)).dropna()
        out.append({"stage": rule, "jobs": len(j), "total_wall_s": j.wall_s.sum(), "longest_s": j.wall_s.max(),
                    "largest_peak_mb": top.peak_mb, "declared_mb_of_that_job": top.declared_mb,
                    "min_headroom": (j.declared_mb / j.peak_mb.clip(lower=1)).min(),
                    "runtime_ratio": (ratio.min(), ratio.max()) if len(ratio) else (float("nan"),) * 2})
    return pd.DataFrame(out)


def over_declared(jobs: pd.DataFrame) -> pd.DataFrame:
    return jobs[jobs.peak_mb > jobs.declared_mb]


def runtime_check(jobs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Jobs whose wall time exceeded their declared ``runtime`` (on SLURM: killed at the limit), and jobs that
    declared more than max(1 minute, 3x their wall time) (on SLURM: a longer queue wait, less backfill)."""
    declared_s = _declared_s(jobs)
    return jobs[jobs.wall_s > declared_s], jobs[declared_s > (3 * jobs.wall_s).clip(lower=60)]


def _declared_s(jobs: pd.DataFrame) -> pd.Series:
    """Each job's declared runtime in seconds (NaN where none was declared)."""
    if "declared_min" not in jobs:
        return pd.Series(float("nan"), index=jobs.index)
    return pd.to_numeric(jobs.declared_min, errors="coerce") * 60


def runtime_lines(jobs: pd.DataFrame, show: int = 5) -> list[str]:
    over, loose = runtime_check(jobs)
    n = int(_declared_s(jobs).notna().sum())
    out = [f"runtime: {n - len(over) - len(loose)} of {n} jobs declare at most max(1 min, 3x their wall time) and "
           f"no less than it; {len(over)} ran longer than declared, {len(loose)} declare more"]
    for label, bad, key in (("longer than declared", over, lambda d: d.wall_s / _declared_s(d)),
                            ("declared loosely", loose, lambda d: _declared_s(d) / d.wall_s.clip(lower=1))):
        for r in bad.assign(_k=key(bad)).sort_values("_k", ascending=False).head(show).itertuples():
            split = r.split if isinstance(r.split, str) else ""
            out.append(f"  {label}: {r.rule} {r.dataset}/{r.category or ''} {split}: "
                       f"{r.wall_s:.0f} s measured, {r.declared_min:g} min declared")
    return out


# ---- projection of the real benchmark ----

REAL_C, REAL_D, REAL_EPOCHS = 1536, 100, 50  # ResNet50 fused channels, d ≈ 100 (§5.3), 50 epochs (§5)
GPU_TFLOPS = 100.0  # assumed achieved fp32/tf32 rate of one datacentre GPU (A100/H100 class) on these convs
GPU_NODE_CORES = 16  # CPU cores of a GPU node (decoding, metrics)
GPU_JOB_STARTUP_S = 15.0  # Python + torch import + CUDA initialisation per job on a GPU node
HDF5_READ_MB_S = 700.0  # measured on this machine (python -m dfr.bench); a node's local disk is similar


GROUPS = {"MVTec AD + VisA": ("mvtec_ad", "visa"), "MVTec AD 2": ("mvtec_ad2",)}


def real_group(cfg: dict) -> str:
    """The real benchmark a rehearsal stands for: MVTec AD 2 when its categories are shaped like MVTec AD 2's."""
    ad2 = any(ds.get("synthetic", {}).get("shape") == "mvtec_ad2" or ds["kind"] == "mvtec_ad2"
              for ds in cfg["datasets"].values())
    return "MVTec AD 2" if ad2 else "MVTec AD + VisA"


def real_workload(group: str = "MVTec AD + VisA") -> dict:
    """Images and pixels of a real benchmark (dfr.shapes): ``n_train`` includes the held-out normals
    (MVTec AD 2's validation images, 10 % of the others' training images), ``n_fit`` the images a model is
    fitted on, ``n_private`` the images of MVTec AD 2's two private test sets (scored for the submission)."""
    w = dict.fromkeys(("n_train", "n_test", "n_fit", "n_held", "n_private", "train_mp", "test_mp", "private_mp"), 0.0)
    cats = 0
    for name in GROUPS[group]:
        for s in shapes.BENCHMARKS[name].values():
            mp = s.width * s.height / 1e6
            n_train, n_test = s.n_train + s.n_validation, s.n_test_good + s.n_test_anomalous
            held = s.n_validation or 0.1 * s.n_train
            w["n_train"] += n_train
            w["n_test"] += n_test
            w["n_fit"] += n_train - held
            w["n_held"] += held
            w["n_private"] += 2 * s.n_private
            w["train_mp"] += n_train * mp
            w["test_mp"] += n_test * mp
            w["private_mp"] += 2 * s.n_private * mp
            cats += 1
    return {"group": group, "categories": cats, "datasets": len(GROUPS[group]), **w}


def measure_backbones(backbones: list[str], threads: int) -> dict[str, float]:
    """Images/s of each backbone (truncated after its last hook, 224², batch 8) on this machine."""
    from dfr.tools.bench import run_isolated, stage_backbone

    out = {}
    for name in backbones:
        r = run_isolated(stage_backbone, backbone=name, layers=shapes.DEFAULT_LAYERS[name], image_size=224, batch=8,
                         threads=threads, device="cpu", channels_last=True)
        out[name] = r["truncated"]["images_per_s"]
    return out


def measure_cae_step(c: int, d: int, hw: int, threads: int, batch: int = 16, steps: int = 4) -> float:
    """Seconds per image of one CAE training step (forward, backward, Adam) at C channels, latent d."""
    import torch

    from dfr.heads.cae import model as cae

    torch.set_num_threads(threads)
    side = int(round(hw ** 0.5))
    model = cae.CAE(c, d, normalize=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, c, side, side).contiguous(memory_format=torch.channels_last)

    def step():
        loss = cae.reconstruction_loss(x, model(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps / batch


def fit_stage(jobs: pd.DataFrame, rule: str, units) -> tuple[float, float]:
    """(start-up seconds, seconds per unit): least squares of a stage's job wall times against the work
    units of each job (``units(row)``); both clipped at 0. One job, or equal units: the mean as start-up."""
    import numpy as np

    j = jobs[jobs.rule == rule]
    if j.empty:
        return 0.0, 0.0
    x = np.array([units(r) for r in j.itertuples()], dtype=float)
    y = j.wall_s.to_numpy(float)
    if len(j) < 2 or np.ptp(x) == 0:
        return float(y.mean()), 0.0
    b, a = np.polyfit(x, y, 1)
    if a < 0:
        return 0.0, float((y @ x) / (x @ x))
    if b < 0:
        return float(y.mean()), 0.0
    return float(a), float(b)


def project(jobs: pd.DataFrame, cfg: dict, backbone_ips: dict[str, float], cae_s: dict[str, float],
            elapsed_s: float | None) -> dict:
    """Per stage: seconds of the real benchmark as job time on this machine and on one GPU node.

    Each stage's job wall time is fitted as a start-up plus a cost per unit of work (megapixel, image,
    image-epoch) over the rehearsal's jobs; the backbone and the CAE are rescaled to ResNet50's (C=1536,
    d=100) by their costs measured here, the data each image moves by the channel ratio.
    """
    wls = {(d, c): workload.workload(cfg, d, c) for d, ds in cfg["datasets"].items() for c in ds["categories"]}
    wl = lambda r: wls[(r.dataset, r.category)]  # noqa: E731
    held = {k: workload.held_out(cfg, w) for k, w in wls.items()}
    hl = lambda r: held[(r.dataset, r.category)]  # noqa: E731
    reh = {"n_train": sum(w.n_train for w in wls.values()), "n_test": sum(w.n_test for w in wls.values()),
           "n_private": sum(w.n_private for w in wls.values()),
           "train_mp": sum(w.train_pixels for w in wls.values()) / 1e6,
           "test_mp": sum(w.test_pixels for w in wls.values()) / 1e6, "categories": len(wls),
           "private_mp": sum(w.n_private * w.max_image_pixels for w in wls.values()) / 1e6}
    real = real_workload(real_group(cfg))
    c_reh, hw = resources.geometry(cfg)
    ch = REAL_C / c_reh
    epochs = cfg["cae"]["epochs"]
    fits = {
        "index": fit_stage(jobs, "index", lambda r: (wl(r).train_pixels + wl(r).test_pixels) / 1e6),
        "features": fit_stage(jobs, "features", lambda r: wl(r).n_train if r.split == "train" else wl(r).n_test),
        "split": fit_stage(jobs, "split", lambda r: 0),
        "pca": fit_stage(jobs, "pca", lambda r: 0),
        "train": fit_stage(jobs, "train", lambda r: (wl(r).n_train - hl(r)) * epochs),
        "maps": fit_stage(jobs, "maps", lambda r: hl(r) + wl(r).n_test),
        "scores": fit_stage(jobs, "scores", lambda r: 0),
        "metrics": fit_stage(jobs, "metrics", lambda r: wl(r).test_pixels / 1e6),
        "plots": fit_stage(jobs, "plots", lambda r: 0),
        "bundle": fit_stage(jobs, "bundle", lambda r: 0),
        "submission_part": fit_stage(jobs, "submission_part",
                                     lambda r: wl(r).n_private * wl(r).max_image_pixels / 1e6),
        "tables": fit_stage(jobs, "tables", lambda r: 0),
    }
    backbone = cfg["features"]["backbone"]
    s_reh, s_real = 1 / backbone_ips[backbone], 1 / backbone_ips["resnet50"]
    mean_mp = (reh["train_mp"] + reh["test_mp"]) / (reh["n_train"] + reh["n_test"])
    decode_per_mp = max(0.0, fits["features"][1] - s_reh) / mean_mp
    all_mp, images = real["train_mp"] + real["test_mp"], real["n_train"] + real["n_test"]
    real_epochs = real["n_fit"] * REAL_EPOCHS
    real_maps = real["n_held"] + real["n_test"]
    step_real, step_reh = cae_s["real"], cae_s["rehearsal"]
    train_per = step_real + max(0.0, fits["train"][1] - step_reh) * ch  # CAE step + data moved per image-epoch
    maps_per = step_real / 3 + max(0.0, fits["maps"][1] - step_reh / 3) * ch  # forward only
    cats, nds = real["categories"], real["datasets"]
    # a private image: decoded, encoded and written as the rehearsal's were (per megapixel, its backbone and
    # forward pass apart), through ResNet50 and the real CAE's forward pass
    reh_private_mp = reh["private_mp"]
    sub_per_mp = (max(0.0, fits["submission_part"][1] * reh_private_mp - reh["n_private"] * (s_reh + step_reh / 3))
                  / reh_private_mp) if reh_private_mp else 0.0
    a = {k: v[0] for k, v in fits.items()}
    up = a["split"]  # the interpreter's and torch's start-up: split does nothing else
    cpu = {
        "index": cats * a["index"] + fits["index"][1] * all_mp,
        "features": 2 * cats * a["features"] + decode_per_mp * all_mp + images * s_real,
        "split": cats * a["split"],
        "pca": cats * (up + max(0.0, a["pca"] - up) * ch ** 2),  # covariance of C-vectors
        "train": cats * (up + max(0.0, a["train"] - up) * ch) + train_per * real_epochs,
        "maps": cats * a["maps"] + maps_per * real_maps,
        "scores": cats * a["scores"],
        "metrics": cats * a["metrics"] + fits["metrics"][1] * real["test_mp"],
        "plots": cats * a["plots"],
        "bundle": cats * a["bundle"],
        "tables": nds * a["tables"],
    }
    if real["n_private"]:
        cpu["submission_part"] = (cats * a["submission_part"] + sub_per_mp * real["private_mp"]
                                  + real["n_private"] * (s_real + step_real / 3))
        # one archive per data set, whose gzip stream grows with the private pixels (one rehearsal job: its rate)
        archive = jobs[jobs.rule == "submission"].wall_s.sum() / reh_private_mp if reh_private_mp else 0.0
        cpu["submission"] = archive * real["private_mp"]
    # one GPU node: backbone and CAE on the GPU, decoding on its cores, the CPU stages spread over its cores
    from dfr.tools.bench import cae_gflop_per_image

    gpu_flops = GPU_TFLOPS * 1e12
    feat_mb = REAL_C * hw * 2 / 2**20  # float16 cache, per image
    cores_here = resources.threads_default()
    gpu = {
        "features": 2 * cats * GPU_JOB_STARTUP_S + max(decode_per_mp * all_mp / GPU_NODE_CORES,
                                                        images * resources.BACKBONE_GFLOP["resnet50"] * 1e9 / gpu_flops),
        "train": cats * GPU_JOB_STARTUP_S + real_epochs * cae_gflop_per_image(REAL_C, REAL_D, hw) * 1e9 / gpu_flops
        + real["n_train"] * feat_mb / HDF5_READ_MB_S,  # the cache is read once, then held in RAM
        "maps": cats * GPU_JOB_STARTUP_S + real_maps * feat_mb / HDF5_READ_MB_S,
    }
    for k in ("index", "split", "pca", "scores", "metrics", "plots", "bundle", "tables"):
        gpu[k] = cpu[k] * cores_here / GPU_NODE_CORES  # this machine's core-seconds over the node's cores
    if real["n_private"]:  # decoding and encoding on the node's cores, the networks on the GPU; one gzip stream
        gpu["submission_part"] = (cats * GPU_JOB_STARTUP_S + sub_per_mp * real["private_mp"] * cores_here
                                  / GPU_NODE_CORES)
        gpu["submission"] = cpu["submission"]
    total_cpu = sum(cpu.values())
    reh_total = float(jobs.wall_s.sum())  # all jobs of the run, whose elapsed time is known
    return {"rehearsal": reh, "real": real, "fits": fits, "cae_step_s_per_image": cae_s,
            "train_s_per_image_epoch": train_per, "backbone_images_per_s": backbone_ips,
            "decode_s_per_mpixel": decode_per_mp, "cpu_job_seconds": cpu, "gpu_node_seconds": gpu,
            "cpu_total_job_seconds": total_cpu,
            "cpu_elapsed_s": total_cpu * (elapsed_s / reh_total) if elapsed_s else None,
            "gpu_node_total_s": sum(gpu.values())}


def _fmt_s(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def report(cfg: dict, jobs: pd.DataFrame, proj: dict | None, elapsed_s: float | None) -> str:
    lines = []
    if elapsed_s:
        lines.append(f"rehearsal wall time (snakemake, --cores {os.cpu_count()}): {_fmt_s(elapsed_s)}")
    s = stage_summary(jobs)
    lines.append("")
    lines.append("| stage | jobs | total wall | longest job | largest peak RSS | declared mem_mb (that job) |"
                 " min declared/peak | declared/measured runtime | real benchmark, this machine | real benchmark, one GPU node |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in s.itertuples():
        cpu = _fmt_s(proj["cpu_job_seconds"][r.stage]) if proj and r.stage in proj["cpu_job_seconds"] else "—"
        gpu = _fmt_s(proj["gpu_node_seconds"][r.stage]) if proj and r.stage in proj["gpu_node_seconds"] else "—"
        lines.append(f"| {r.stage} | {r.jobs} | {_fmt_s(r.total_wall_s)} | {_fmt_s(r.longest_s)} | "
                     f"{r.largest_peak_mb:.0f} MB | {r.declared_mb_of_that_job:.0f} | {r.min_headroom:.2f} | "
                     f"{r.runtime_ratio[0]:.1f}-{r.runtime_ratio[1]:.1f}x | {cpu} | {gpu} |")
    if proj:
        lines.append("")
        re_, rl = proj["rehearsal"], proj["real"]
        lines.append(f"rehearsal: {re_['categories']} categories, {re_['n_train']} train + {re_['n_test']} test images, "
                     f"{re_['test_mp']:.0f} M test pixels; real: {rl['group']}, {rl['categories']} categories, "
                     f"{rl['n_train']:.0f} + {rl['n_test']:.0f} images, {rl['test_mp']:.0f} M test pixels"
                     + (f", {rl['n_private']:.0f} private test images ({rl['private_mp']:.0f} M pixels)"
                        if rl["n_private"] else ""))
        ips = ", ".join(f"{k} {v:.1f} img/s" for k, v in proj["backbone_images_per_s"].items())
        cs = proj["cae_step_s_per_image"]
        f = proj["fits"]
        lines.append(f"measured here: job start-up {f['split'][0]:.1f} s (split); backbones (224², batch 8) {ips}; "
                     f"decoding {proj['decode_s_per_mpixel'] * 1e3:.0f} ms per megapixel; CAE training step "
                     f"{cs['real'] * 1e3:.1f} ms per image at C=1536, d=100 vs {cs['rehearsal'] * 1e3:.2f} ms at the "
                     f"rehearsal's C={resources.geometry(cfg)[0]}, d={cs['rehearsal_d']:.0f}; training "
                     f"{f['train'][1] * 1e3:.2f} ms per image-epoch here, {proj['train_s_per_image_epoch'] * 1e3:.1f} ms "
                     f"projected for ResNet50; metrics {f['metrics'][1]:.3f} s per megapixel")
        el = proj["cpu_elapsed_s"]
        lines.append(f"projected {rl['group']} on this machine: {_fmt_s(proj['cpu_total_job_seconds'])} of job time"
                     + (f", about {_fmt_s(el)} elapsed with --cores all (the rehearsal's parallelism)" if el else ""))
        lines.append(f"projected {rl['group']} on one GPU node ({GPU_TFLOPS:.0f} TFLOP/s achieved, {GPU_NODE_CORES} cores, "
                     f"{GPU_JOB_STARTUP_S:.0f} s start-up per GPU job; assumptions, not measured): "
                     f"{_fmt_s(proj['gpu_node_total_s'])}")
    bad = over_declared(jobs)
    lines.append("")
    lines += runtime_lines(jobs)
    if len(bad):
        lines.append(f"{len(bad)} job(s) peaked above their declared mem_mb:")
        for r in bad.itertuples():
            lines.append(f"  {r.rule} {r.dataset}/{r.category or ''} {r.split or ''}: peak {r.peak_mb:.0f} MB > "
                         f"declared {r.declared_mb} MB")
    else:
        lines.append(f"every job's peak RSS is below its declared mem_mb ({len(jobs)} jobs)")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dfr.rehearsal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", required=True)
    p.add_argument("--run", action="store_true", help="run the workflow first (snakemake --cores)")
    p.add_argument("--cores", default="all")
    p.add_argument("--no-projection", action="store_true", help="skip the backbone measurement and projection")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        cfg = dfr_config.load(a.configfile)
    except DFRError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    elapsed = None
    if a.run:
        snakefile = Path(__file__).resolve().parents[3] / "Snakefile"
        cmd = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(snakefile), "--cores", a.cores,
               "--configfile", a.configfile]
        t = time.perf_counter()
        r = subprocess.run(cmd)
        elapsed = time.perf_counter() - t
        if r.returncode:
            print(f"error: snakemake exited with {r.returncode}", file=sys.stderr)
            return r.returncode
    jobs = collect(cfg)
    if jobs.empty:
        print(f"error: no benchmark records of {a.configfile}'s jobs under {cfg['results']}/benchmarks/ (run it first)",
              file=sys.stderr)
        return 2
    proj = None
    if cfg["ensemble"]["members"] and not a.no_projection:
        print("(no projection: it models the paper's single ResNet50 model; this config is an ensemble)")
    elif not a.no_projection:
        threads = resources.threads_default()
        names = sorted({cfg["features"]["backbone"], "resnet50"})
        c, hw = resources.geometry(cfg)
        ds = [read_json(p)["latent_dim"] for d, dd in cfg["datasets"].items() for cat in dd["categories"]
              if Path(p := plan.paths(cfg, d, cat)["pca"]).is_file()] or [heads.get(cfg["model"]).latent(cfg, c)]
        d_reh = int(round(sum(ds) / len(ds)))
        cae_s = {"real": measure_cae_step(REAL_C, REAL_D, hw, threads),
                 "rehearsal": measure_cae_step(c, d_reh, hw, threads), "rehearsal_d": d_reh}
        proj = project(jobs, cfg, measure_backbones(names, threads), cae_s, elapsed)
    print(report(cfg, jobs, proj, elapsed))
    if a.json:
        Path(a.json).write_text(json.dumps({"jobs": jobs.to_dict("records"), "stages": stage_summary(jobs)
                                            .to_dict("records"), "projection": proj, "elapsed_s": elapsed},
                                           indent=2, default=float))
    return 1 if len(over_declared(jobs)) else 0


if __name__ == "__main__":
    sys.exit(main())
