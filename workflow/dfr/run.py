"""Run a config's whole pipeline in one process, in DAG order, without Snakemake.

    python -m dfr.run --configfile config/demo.yaml [--set device=cuda results=results-gpu]

Same stages, parameters and artifact paths as the Snakefile; an artifact that exists is kept (no rerun
logic: use Snakemake for incremental reruns, SLURM and parallel categories). Meant for machines without
Snakemake (e.g. a GPU box with only PyTorch) and for debugging one config end to end.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import yaml

from . import config as dfr_config
from . import studies
from .io import DFRError


def _set(cfg: dict, assignment: str) -> None:
    key, _, value = assignment.partition("=")
    studies.set_key(cfg, key, yaml.safe_load(value), "--set")


def model_stages(cfg: dict, dataset: str, category: str, stage) -> None:
    """Features, split, PCA, model and maps of one category under ``cfg``."""
    from . import cae, data, features, pca, scoring

    rt = dfr_config.feature_runtime(cfg)
    p = dfr_config.paths(cfg, dataset, category)
    job = (cfg, dataset, category)
    for split in ("train", "test"):
        stage("features", p[f"features_{split}"], lambda: features.extract(
            p["index"], split, p[f"features_{split}"], {**rt, **dfr_config.feature_params(cfg)}), (*job, split))
    sp = dfr_config.split_params(cfg)
    stage("split", p["split"], lambda: data.write_split(p["index"], p["split"], sp["val_fraction"], sp["seed"]), job)
    auto = dfr_config.uses_pca(cfg)
    if auto:
        stage("pca", p["pca"], lambda: pca.run(p["features_train"], p["split"], p["pca"], dfr_config.pca_params(cfg)),
              job)
    stage("train", p["model"], lambda: cae.train(
        p["features_train"], p["split"], p["model"], p["history"],
        {"device": rt["device"], "in_memory": rt["train_in_memory"], **dfr_config.cae_params(cfg)},
        pca_json=p["pca"] if auto else None), job)
    stage("maps", p["maps"], lambda: scoring.anomaly_maps(
        p["model"], p["features_train"], p["features_test"], p["split"], p["maps"],
        {"device": rt["device"], "batch_size": rt["batch_size"]}), job)


def run(cfg: dict, force: bool = False) -> dict[str, float]:
    from . import data, datasets, ensemble, metrics, plots, predict, scoring, synthetic, tables

    timings: dict[str, float] = {}

    def stage(name: str, out: str, fn, job: tuple | None = None) -> None:
        """Make ``out`` unless it exists; with ``job`` (config, dataset, category[, split]) its wall time goes
        where Snakemake keeps the job's benchmark record, so that a study's costs read alike after either."""
        if Path(out).exists() and not force:
            return
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        timings[name] = timings.get(name, 0.0) + dt
        if job:
            bench = Path(dfr_config.benchmark_path(dfr_config.log_paths(*job)[name]))
            bench.parent.mkdir(parents=True, exist_ok=True)
            bench.write_text(f"s\th:m:s\n{dt:.4f}\t{time.strftime('%H:%M:%S', time.gmtime(dt))}\n")

    for dataset, ds in cfg["datasets"].items():
        root = dfr_config.dataset_root(cfg, dataset)
        if ds["kind"] in ("mvtec", "visa"):
            stage("prepare_dataset", f"{root}/.dfr-ready", lambda: datasets.prepare(root, ds))
        for category in ds["categories"]:
            p = dfr_config.paths(cfg, dataset, category)
            if ds["kind"] == "synthetic":
                stage("synthetic", p["synthetic"], lambda: synthetic.generate_category(
                    root, category, **ds["synthetic"], seed=cfg["seed"]))
            stage("index", p["index"], lambda: data.write_index(data.index_category(root, category), p["index"]))
            ms = ensemble.members(cfg)
            for m in ms or [cfg]:  # each member's model and maps (shared by key), or the config's own
                model_stages(m, dataset, category, stage)
            if ms:
                stage("ensemble", p["maps"], lambda: ensemble.fuse(
                    [dfr_config.paths(m, dataset, category)["maps"] for m in ms], p["maps"],
                    ensemble.fusion_params(cfg)), (cfg, dataset, category))
            stage("scores", p["scores"], lambda: scoring.image_scores(p["maps"], p["scores"],
                                                                      cfg["scoring"]["top_k"],
                                                                      cfg["scoring"]["border"]))
            stage("metrics", p["metrics"], lambda: metrics.evaluate(
                p["scores"], p["maps"], p["metrics"],
                {**dfr_config.metrics_params(cfg, dataset), "dataset": dataset, "category": category}))
            if "study_variant" not in cfg and not ms:  # as in the Snakefile: a study compares, it deploys nothing
                stage("bundle", p["bundle"], lambda: predict.write_bundle(p["model"], p["metrics"], p["bundle"],
                                                                          dfr_config.bundle_params(cfg)))
            stage("plots", f"{p['plots']}/roc.png", lambda: plots.category_figures(
                p["scores"], p["maps"], p["metrics"], p["history"], p["plots"],
                {"n_examples": 3, **dfr_config.border_params(cfg)}))
        t = dfr_config.table_paths(cfg, dataset)
        mfiles = [dfr_config.paths(cfg, dataset, c)["metrics"] for c in ds["categories"]]
        ref = dfr_config.reference(cfg, dataset)
        stage("tables", t["csv"], lambda: tables.write(mfiles, dataset, t["csv"], t["md"], t["val"], ref))
    return timings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dfr.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", required=True)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys (dotted)")
    ap.add_argument("--force", action="store_true", help="recompute artifacts that exist")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        raw = yaml.safe_load(Path(a.configfile).read_text()) or {}
        for s in a.set:
            _set(raw, s)
        cfg = dfr_config.validate(raw, a.configfile)
        variants = studies.variants(cfg, a.configfile)
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        for vcfg in variants.values():  # a study's variants share what exists already
            for k, v in run(vcfg, a.force).items():
                timings[k] = timings.get(k, 0.0) + v
        if cfg["study"]:
            c = studies.comparison_paths(cfg["results"], cfg["experiment"])
            studies.compare(studies.manifest(cfg, variants), c["csv"], c["md"], c["best"], c["plots"])
    except DFRError as e:
        print(f"dfr.run: error: {e}", file=sys.stderr)
        return 2
    total = time.perf_counter() - t0
    print(f"pipeline finished in {total:.1f} s; seconds per stage: "
          + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    if cfg["study"]:
        print(Path(studies.comparison_paths(cfg["results"], cfg["experiment"])["md"]).read_text())
        return 0
    for dataset in cfg["datasets"]:
        print(Path(dfr_config.table_paths(cfg, dataset)["md"]).read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
