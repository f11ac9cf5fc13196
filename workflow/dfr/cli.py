"""The small command-line interface the Snakemake rules call: ``dfr <stage> ...``.

Stage parameters travel as one JSON object (``--params``), so a rule's ``params`` and what the stage sees
are the same thing.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import signal
import sys
import time

from dfr.io import DFRError, no_space


def _params(s: str) -> dict:
    try:
        return json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--params is not JSON: {e}") from None


def parser() -> argparse.ArgumentParser:
    """The ``dfr`` command line (its subcommands and flags; tests check the documented commands against it)."""
    p = argparse.ArgumentParser(prog="dfr", description=__doc__)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (the rule's threads)")
    sub = p.add_subparsers(dest="stage", required=True)

    s = sub.add_parser("synthetic", help="generate one synthetic category in MVTec layout")
    s.add_argument("--root", required=True)
    s.add_argument("--category", required=True)
    s.add_argument("--params", type=_params, default={})

    s = sub.add_parser("prepare-dataset", help="download, verify and extract a public dataset")
    s.add_argument("--root", required=True)
    s.add_argument("--spec", type=_params, required=True)

    s = sub.add_parser("submission-part", help="MVTec AD 2: one category's private anomaly images, into a tar")
    s.add_argument("--bundle", required=True)
    s.add_argument("--metrics", required=True)
    s.add_argument("--index", required=True)
    s.add_argument("--category", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--batch-size", type=int, default=None)

    s = sub.add_parser("submission", help="MVTec AD 2: the categories' tars joined into the archive to upload")
    s.add_argument("--parts", nargs="+", required=True)
    s.add_argument("--out", required=True)

    s = sub.add_parser("index", help="validate and index one MVTec-layout category")
    s.add_argument("--root", required=True)
    s.add_argument("--category", required=True)
    s.add_argument("--out", required=True)

    s = sub.add_parser("split", help="hold out normal training images for validation")
    s.add_argument("--index", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--params", type=_params, required=True)

    s = sub.add_parser("features", help="extract fused features f(x) of one split into HDF5")
    s.add_argument("--index", required=True)
    s.add_argument("--split", required=True, choices=["train", "test"])
    s.add_argument("--out", required=True)
    s.add_argument("--params", type=_params, required=True)

    s = sub.add_parser("pca", help="select the latent dimension d by PCA")
    s.add_argument("--features", required=True)
    s.add_argument("--split-json", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--params", type=_params, required=True)

    s = sub.add_parser("train", help="fit the model (its head: params kind) on cached normal features")
    s.add_argument("--features", required=True)
    s.add_argument("--split-json", required=True)
    s.add_argument("--pca", default=None)
    s.add_argument("--model", required=True)
    s.add_argument("--history", required=True)
    s.add_argument("--info", default=None, help="the model's sidecar (model.json: size, parameters, epochs)")
    s.add_argument("--params", type=_params, required=True)

    s = sub.add_parser("maps", help="anomaly maps A(x) of validation and test images")
    s.add_argument("--model", required=True)
    s.add_argument("--train-features", required=True)
    s.add_argument("--test-features", required=True)
    s.add_argument("--split-json", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--params", type=_params, default={})

    s = sub.add_parser("ensemble", help="fuse several models' anomaly maps (each normalised by its validation maps)")
    s.add_argument("--maps", nargs="+", required=True, help="the members' maps.h5, in the ensemble's order")
    s.add_argument("--out", required=True)
    s.add_argument("--params", type=_params, default={})

    s = sub.add_parser("scores", help="top-k image scores s(x)")
    s.add_argument("--maps", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--params", type=_params, required=True,
                   help="JSON: top_k, and border (cells of A(x) at each edge left out, scoring.border)")

    s = sub.add_parser("metrics", help="per-category metrics")
    s.add_argument("--scores", required=True)
    s.add_argument("--maps", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--params", type=_params, required=True)

    s = sub.add_parser("plots", help="per-category figures")
    s.add_argument("--scores", required=True)
    s.add_argument("--maps", required=True)
    s.add_argument("--metrics", required=True)
    s.add_argument("--history", required=True)
    s.add_argument("--outdir", required=True)
    s.add_argument("--params", type=_params, default={})

    s = sub.add_parser("bundle", help="write a category's self-contained model bundle")
    s.add_argument("--model", nargs="+", required=True, help="the model.pt of each member, in order (or one)")
    s.add_argument("--maps", help="an ensemble's fused maps.h5 (its members' z-score statistics)")
    s.add_argument("--metrics", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--params", type=_params, required=True)

    s = sub.add_parser("predict", help="score new images with a model bundle (see dfr.predict)",
                       description="Score images with a bundle written by the workflow "
                                   "(results/<experiment>/<dataset>/<category>/bundle.pt): a CSV/JSON of score and "
                                   "decision per image, heatmap overlays and binary masks at T_pixel. "
                                   "Exit status: 0 every image scored; 1 some images could not be read (the others "
                                   "are scored; predictions.csv names them); 2 nothing was scored: a bundle that "
                                   "cannot be used, an input that does not exist or holds no image, or no image "
                                   "that could be read.")
    s.add_argument("bundle", help="bundle.pt of a category")
    s.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--threshold", default="val_mean_std",
                   help="the bundle's image threshold: val_mean_std (default: mean + alpha*std of held-out normals), "
                        "val_percentile, f1_optimal (an oracle: chosen on the test labels), or few_label_K (set with "
                        "K labelled defective images, thresholds.few_labels)")
    s.add_argument("--device", default="auto")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--workers", type=int, default=0, help="decoding worker processes")
    s.add_argument("--no-images", action="store_true", help="scores and decisions only, no heatmaps or masks")
    s.add_argument("--max-pixels", type=int, default=None,
                   help="skip (unread) an image whose header declares more pixels than this (default: Pillow's "
                        "decompression-bomb limit, about 89 million)")

    s = sub.add_parser("export", help="a bundle as one TorchScript graph, backbone through A(x) and s(x) "
                                      "(see dfr.export)")
    s.add_argument("bundle", help="bundle.pt of a category")
    s.add_argument("--out", required=True, help="the TorchScript file to write (e.g. model.ts)")

    s = sub.add_parser("tables", help="aggregate per-category metrics into a dataset's tables")
    s.add_argument("--metrics", nargs="+", required=True)
    s.add_argument("--dataset", required=True)
    s.add_argument("--csv", required=True)
    s.add_argument("--md", required=True)
    s.add_argument("--val-csv", required=True)
    s.add_argument("--reference", default="", choices=["", "mvtec_ad", "visa"],
                   help="put the paper's table for this benchmark beside ours")

    s = sub.add_parser("study", help="compare a study's variants: table, best variant, plots (see dfr.studies)")
    s.add_argument("--manifest", required=True,
                   help="JSON file: the variants, their settings and the files to read (the study_manifest rule's)")
    s.add_argument("--csv", required=True)
    s.add_argument("--md", required=True)
    s.add_argument("--best", required=True)
    s.add_argument("--plots", required=True, help="folder for the figures")
    s.add_argument("--timing", default=None, help="the study's timing (dfr timing --manifest): its speeds")

    s = sub.add_parser("timing", help="warm, in-process speeds (images/s) of a study's variants or of bundles, "
                                      "on the same images (see dfr.timing)")
    s.add_argument("--manifest", default=None, help="a study's manifest: time each variant (the study_timing rule)")
    s.add_argument("--params", type=_params, default={"images": 16, "batch": 8, "repeats": 3})
    s.add_argument("--bundle", nargs="+", default=[], help="bundle.pt files to time, on --images")
    s.add_argument("--images", nargs="+", default=[], help="image files, folders or globs (with --bundle)")
    s.add_argument("--device", default=None, help="auto, cpu or cuda (default: the run's, else auto)")
    s.add_argument("--out", required=True, help="timing.csv (with --manifest) or a JSON file (with --bundle)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    t0 = time.perf_counter()
    if hasattr(signal, "SIGXFSZ"):  # over a file-size limit, let write() fail with EFBIG instead of a kill
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        return _run(args)
    except DFRError as e:
        print(f"dfr {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        full = disk_full(e, args)
        if full is None:
            raise
        print(f"dfr {args.stage}: error: {full}", file=sys.stderr)
        return 2
    finally:  # exact figures beside Snakemake's sampled benchmark record
        from dfr import measure

        logging.info("dfr %s: wall %.1f s, CPU %.1f s, peak RSS %.0f MB", args.stage, time.perf_counter() - t0,
                     measure.cpu_seconds(), measure.peak_rss_mb())


def entry() -> None:
    """The command line (``dfr``, ``python -m dfr``, each Snakemake job): :func:`main`, then out of the process
    without the interpreter's teardown, which with torch and torch._dynamo loaded costs 0.7-2 s of CPU per
    process here (a job's start-up again). By then every file is written and closed (each writer is a context
    manager, a data loader's workers are joined when it is exhausted) and the streams are flushed here; an
    exception that escapes main() leaves the ordinary way, with its traceback."""
    rc = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


_FULL = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "the file would exceed the size limit",
         errno.EDQUOT: "the disk quota is exceeded"}


def disk_full(e: BaseException, args: argparse.Namespace) -> str | None:
    """One line for a write that failed for want of space (errno, or the text h5py wraps it in), naming the
    file and the free space; None for any other error."""
    code = getattr(e, "errno", None)
    text = str(e)
    if code not in _FULL:
        code = next((c for c, m in ((errno.ENOSPC, "No space left"), (errno.EFBIG, "File too large"),
                                     (errno.EDQUOT, "quota exceeded")) if m in text), None)
    if code is None:
        return None
    target = getattr(e, "filename", None) or next(
        (getattr(args, k) for k in ("out", "model", "outdir", "csv") if getattr(args, k, None)), ".")
    where = os.path.dirname(os.path.abspath(target)) or "."
    while not os.path.isdir(where):
        where = os.path.dirname(where)
    return no_space(target, _FULL[code], shutil.disk_usage(where).free, where)


def runtime() -> dict:
    """Runtime-only settings (batch size, workers, device) that the Snakefile puts in DFR_RUNTIME."""
    try:
        return json.loads(os.environ.get("DFR_RUNTIME", "{}"))
    except json.JSONDecodeError:
        raise DFRError(f"DFR_RUNTIME is not JSON: {os.environ['DFR_RUNTIME']!r}") from None


def _run(a: argparse.Namespace) -> int:
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    rt = runtime()
    if a.stage == "synthetic":
        from dfr.stages import synthetic

        synthetic.generate_category(a.root, a.category, **{k: v for k, v in a.params.items() if k != "code"})
    elif a.stage == "prepare-dataset":
        from dfr.stages import datasets

        datasets.prepare(a.root, a.spec)
    elif a.stage == "index":
        from dfr.stages import data

        df = data.index_category(a.root, a.category)
        data.write_index(df, a.out)
        logging.info("indexed %s/%s: %d train, %d test (%d anomalous), %d private", a.root, a.category,
                     (df.split == "train").sum(), (df.split == "test").sum(), (df.label == 1).sum(),
                     (df.split == "private").sum())
    elif a.stage == "split":
        from dfr.stages import data

        data.write_split(a.index, a.out, a.params["val_fraction"], a.params["seed"])
    elif a.stage == "features":
        from dfr.stages import features

        # where the local weights file that params.weights names (by its sha256) lies: runtime-only
        features.extract(a.index, a.split, a.out, {**rt, **a.params},
                         weights_file=rt.get("weights_files", {}).get(a.params["weights"]))
    elif a.stage == "pca":
        from dfr.stages import pca

        pca.run(a.features, a.split_json, a.out, a.params)
    elif a.stage == "train":
        from dfr import heads

        # the head's runtime-only settings travel in DFR_RUNTIME, not in its params
        own = rt.get("heads", {}).get(heads.kind_of(a.params), {})
        heads.fit(a.features, a.split_json, a.model, a.history, {"device": rt.get("device", "auto"), **own, **a.params},
                  pca_json=a.pca, out_info=a.info)
    elif a.stage == "maps":
        from dfr.stages import scoring

        mp = {"device": rt.get("device", "auto"), "batch_size": rt.get("batch_size", 16), **a.params}
        scoring.anomaly_maps(a.model, a.train_features, a.test_features, a.split_json, a.out, mp)
    elif a.stage == "ensemble":
        from dfr.stages import ensemble

        ensemble.fuse(a.maps, a.out, a.params)
    elif a.stage == "scores":
        from dfr.stages import scoring

        scoring.image_scores(a.maps, a.out, a.params["top_k"], a.params.get("border", 0))
    elif a.stage == "metrics":
        from dfr.stages import metrics

        metrics.evaluate(a.scores, a.maps, a.out, a.params)
    elif a.stage == "plots":
        from dfr.stages import plots

        plots.category_figures(a.scores, a.maps, a.metrics, a.history, a.outdir, a.params)
    elif a.stage == "bundle":
        from dfr.stages import predict

        # where a local weights file lies travels with the bundle (runtime-only: its identity is in the params)
        wfs = [rt.get("weights_files", {}).get(fp["weights"]) for fp in a.params["features"]]
        predict.write_bundle(a.model, a.metrics, a.out, {**a.params, "weights_files": wfs}, a.maps)
    elif a.stage == "predict":
        from dfr.stages import predict

        df = predict.predict(a.bundle, a.images, a.out, a.threshold, a.device, a.batch_size, a.workers,
                             heatmaps=not a.no_images, max_pixels=a.max_pixels)
        ok = df[df.error == ""]
        print(f"{len(ok)} images scored ({int(ok.anomalous.sum())} anomalous at {a.threshold}), "
              f"{len(df) - len(ok)} skipped: {a.out}/predictions.csv")
        if len(ok) < len(df):
            return 1  # some images could not be read: the others are scored, predictions.csv says which
    elif a.stage == "export":
        from dfr.stages import export

        meta = export.export(a.bundle, a.out)
        print(f"{a.out}: inputs {meta['inputs']}, outputs (A, s)")
    elif a.stage == "tables":
        from dfr.stages import tables

        tables.write(a.metrics, a.dataset, a.csv, a.md, a.val_csv, a.reference or None)
    elif a.stage == "study":
        from dfr.stages import studies
        from dfr.io import read_json

        manifest = read_json(a.manifest)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("variants"), list):
            raise DFRError(f"{a.manifest}: not a study manifest (an object with a 'variants' list); "
                           "the study_manifest rule writes it")
        studies.compare(manifest, a.csv, a.md, a.best, a.plots, timing_csv=a.timing)
    elif a.stage == "submission-part":
        from dfr.stages import submission

        submission.category_tar(a.bundle, a.metrics, a.index, a.category, a.out, rt.get("device", "auto"),
                                a.batch_size or rt.get("batch_size", 8))
    elif a.stage == "submission":
        from dfr.stages import submission

        print(f"{submission.archive(a.parts, a.out)} files -> {a.out}")
    elif a.stage == "timing":
        from dfr.stages import timing

        device = a.device or rt.get("device", "auto")
        if a.manifest:
            from dfr.io import read_json

            timing.study(read_json(a.manifest), a.out, a.params, device, rt.get("weights_files"))
        elif a.bundle and a.images:
            rows = timing.bundles(a.bundle, a.images, a.out, a.params["batch"], a.params["repeats"], device)
            for r in rows:
                print(f"{r['variant']}: {r['score_ips']:.2f} images/s scored, backbones alone "
                      f"{r['backbone_ips']:.2f}, decoding {r['decode_ips']:.2f} ({r['images']} images, "
                      f"{r['threads']} threads, {r['device']})")
        else:
            raise DFRError("dfr timing takes --manifest, or --bundle with --images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
