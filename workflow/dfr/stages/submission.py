"""MVTec AD 2's leaderboard submission: anomaly images of the unlabelled private test sets.

The evaluation server reads one archive holding, for every category and for both private sets::

    anomaly_images/<category>/<test_private|test_private_mixed>/<image stem>.tiff
        the continuous anomaly image Ã(x) at the image's own size, single channel, float16
    anomaly_images_thresholded/<category>/<test_private|test_private_mixed>/<image stem>.png
        Ã(x) binarised at the segmentation threshold: 255 anomalous, 0 normal

Each category's images are scored with its bundle (:mod:`dfr.predict`: the run's own preprocessing, backbone,
model and upsampling, so the maps are the ones the run evaluated) and binarised at the threshold its
metrics.json set from the held-out validation images (``pixel.seg_f1``: mean + α·σ of their pixels). No
metric is computed on these images: their labels are not public. :func:`category_tar` writes one category's
files into a tar; :func:`archive` joins the categories' tars into the ``.tar.gz`` to upload.
"""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import numpy as np

from dfr.stages.data import AD2_PRIVATE, read_index
from dfr.io import DFRError, atomic_path, read_json, remake_hint

log = logging.getLogger(__name__)

CODE_VERSIONS = {"submission": 1}


def seg_threshold(metrics_json: str | Path) -> float:
    """The segmentation threshold the run set on the held-out validation images (metrics.json pixel.seg_f1)."""
    m = read_json(metrics_json)
    seg = (m.get("pixel") or {}).get("seg_f1")
    if not seg:
        raise DFRError(f"{metrics_json}: no segmentation threshold (pixel.seg_f1): the category needs held-out "
                       "validation images and ground-truth masks in test_public; " + remake_hint(metrics_json))
    return float(seg["threshold"])


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def encode(a: np.ndarray, t: float) -> tuple[bytes, bytes]:
    """(the float16 TIFF of Ã(x), the 0/255 PNG of Ã(x) ≥ t) for one full-size anomaly image."""
    import tifffile
    from PIL import Image

    tif, png = io.BytesIO(), io.BytesIO()
    tifffile.imwrite(tif, np.clip(a, -65504, 65504).astype(np.float16), compression="zlib")
    Image.fromarray(((a >= t) * 255).astype(np.uint8), "L").save(png, format="PNG")
    return tif.getvalue(), png.getvalue()


def category_tar(bundle_path: str | Path, metrics_json: str | Path, index_csv: str | Path, category: str,
                 out: str | Path, device: str = "auto", batch_size: int = 8) -> dict[str, int]:
    """Score a category's private images (the index's split ``private``) with its bundle and write their
    anomaly images, continuous and binarised, into the tar ``out`` under the server's paths. One batch of
    maps at a time; each full-size map is upsampled, encoded and dropped before the next."""
    import torch

    from dfr.stages import predict
    from dfr.stages.features import load_image
    from dfr.stages.metrics import upsample

    idx = read_index(index_csv)
    rows = idx[idx.split == "private"]
    if rows.empty:
        raise DFRError(f"{index_csv}: no private test images ({', '.join(AD2_PRIVATE)}) in the index of "
                       f"{category}: a leaderboard submission scores them")
    t = seg_threshold(metrics_json)
    pred = predict.Predictor(predict.load_bundle(bundle_path), device)
    counts: dict[str, int] = {}
    with atomic_path(out, suffix=".tar") as tmp, tarfile.open(tmp, "w") as tar:
        recs = list(rows.itertuples(index=False))
        for s in range(0, len(recs), batch_size):
            batch = recs[s:s + batch_size]
            xs = [pred.preprocess(load_image(r.path)) for r in batch]
            a = pred.maps(tuple(torch.stack([x[j] for x in xs]) for j in range(len(pred.inputs))))
            for r, ai in zip(batch, a):
                split, stem = r.image_id.split("/", 1)
                tif, png = encode(upsample(ai, (int(r.height), int(r.width))), t)
                _add(tar, f"anomaly_images/{category}/{split}/{stem}.tiff", tif)
                _add(tar, f"anomaly_images_thresholded/{category}/{split}/{stem}.png", png)
                counts[split] = counts.get(split, 0) + 1
    log.info("%s: %s private images -> %s (threshold %.6g)", category, counts, out, t)
    return counts


def archive(category_tars: list[str | Path], out: str | Path) -> int:
    """Join the categories' tars into the ``.tar.gz`` the server takes (members streamed, nothing decoded)."""
    n = 0
    with atomic_path(out, suffix=".tar.gz") as tmp, tarfile.open(tmp, "w:gz") as dst:
        for p in category_tars:
            try:
                with tarfile.open(p) as src:
                    for m in src:
                        dst.addfile(m, src.extractfile(m))
                        n += 1
            except (tarfile.TarError, OSError) as e:
                raise DFRError(f"{p}: not a readable category tar ({e}); " + remake_hint(p)) from None
    return n
