"""Hierarchical feature extraction (§3.1) and multi-scale fusion (§3.2), cached to HDF5.

φ_a, φ_b are the outputs of the hooked layers (``layer2[-1]``, ``layer3[-1]`` for ResNet50). Each is
aligned to the first layer's grid (bilinear), smoothed by AvgPool 3×3 stride 1 padding 1, and the results
are concatenated along channels: f(x) ∈ R^{C×28×28}, C = 512 + 1024 = 1536 at 224².
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from PIL import Image

from dfr import compute
from dfr.stages import backbones
from dfr.stages.data import ImageError, checked, collate_images, open_image, read_index
from dfr.stages.cache import write_cache_meta
from dfr.io import DFRError, atomic_path, check_space

log = logging.getLogger(__name__)

# The code version of the fused features f(x): this module (what an image becomes before the backbone: its
# decoding to RGB and preprocessing, here; the fusion; the rounding to the cache) and the backbones'
# construction and BN folding in dfr.backbones. dfr.keys reads it (without importing this module) into the
# params and keys of what it makes. Bump it when a change alters what is written
# (tests/test_golden.py fails until it is).
CODE_VERSIONS = {"features": 1}
# tests/test_golden.py: per version, the digests of the stage's fixed tiny input and of its rounded output
GOLDEN = {"features": {1: ("ba53ddaa8f4a903d", "f5924bfbe4db936a")}}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---- an image, as the backbone sees it (§5.1) ----

def load_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Open an image as 8-bit RGB, whatever its mode (grey, RGBA, palette, 16-bit); with ``max_pixels``, one
    larger than that is refused before it is decoded."""
    with open_image(path, "image", max_pixels) as im:
        im.load()
        return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit and float grey scaled to 0-255, transparency composited on black."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        im = Image.fromarray(a, mode="L")
    if im.mode == "RGBA" or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing of §5.1: resize to ``image_size``², ToTensor, optional ImageNet normalisation."""

    image_size: int = 224
    normalize: bool = True

    def __call__(self, im: Image.Image) -> "torch.Tensor":
        im = im.resize((self.image_size, self.image_size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        if self.normalize:
            mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
            x = (x - mean) / std
        return x


class ImageDataset:
    """Images of an index (one split), preprocessed for the backbone (a map-style dataset for
    torch.utils.data.DataLoader)."""

    def __init__(self, paths: list[str], preprocess: Preprocess):
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> "torch.Tensor | ImageError":
        try:
            return self.preprocess(load_image(self.paths[i]))
        except DFRError as e:  # raised in the main process (collate_images), not in a loader worker
            return ImageError(str(e))


class _LastLayerReached(Exception):
    """Raised by the last hook: the rest of the backbone (layer4, pooling, fc) is never computed."""


def fuse(maps: Sequence[torch.Tensor], pool: int = 3, grid: int | None = None) -> torch.Tensor:
    """f(x): align every map to the first one's grid (bilinear), AvgPool(pool, 1, pool // 2), concatenate.
    ``grid`` (beyond the paper) chooses the fused grid explicitly, e.g. finer than the first hooked layer's."""
    size = (grid, grid) if grid else maps[0].shape[-2:]
    out = []
    for m in maps:
        if m.shape[-2:] != size:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        if pool > 1:
            m = F.avg_pool2d(m, kernel_size=pool, stride=1, padding=pool // 2)
        out.append(m)
    return torch.cat(out, dim=1)


class FeatureExtractor(nn.Module):
    """Forward hooks on the configured layers of a frozen backbone; returns fused features f(x)."""

    def __init__(self, backbone: nn.Module, layers: Sequence[str], pool: int = 3, truncate: bool = True,
                 grid: int | None = None):
        super().__init__()
        if not layers:
            raise DFRError("features.layers is empty: name at least one layer to hook")
        self.backbone = backbone
        self.layers = list(layers)
        self.pool, self.grid = pool, grid
        self.truncate = truncate
        self._maps: dict[int, torch.Tensor] = {}
        self._active = False  # hooks act only during this extractor's own forward pass
        self._handles = [backbones.get_layer(backbone, name).register_forward_hook(self._hook(i))
                         for i, name in enumerate(self.layers)]

    def _hook(self, i: int):
        def fn(_module, _inputs, output):
            if not self._active:
                return
            self._maps[i] = output
            if self.truncate and len(self._maps) == len(self.layers):
                raise _LastLayerReached

        return fn

    def hooked(self, x: torch.Tensor) -> list[torch.Tensor]:
        """φ_ℓ(x) for every hooked layer, in config order."""
        self._maps = {}
        self._active = True
        try:
            self.backbone(x)
        except _LastLayerReached:
            pass
        finally:
            self._active = False
        missing = [self.layers[i] for i in range(len(self.layers)) if i not in self._maps]
        if missing:
            raise DFRError(f"hooked layers never ran in the forward pass: {missing}")
        maps, self._maps = [self._maps[i] for i in range(len(self.layers))], {}
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fuse(self.hooked(x), self.pool, self.grid)

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _one_thread(_worker_id: int) -> None:
    """Decoding workers use one thread each: the cores belong to the backbone."""
    torch.set_num_threads(1)


def to_cache_dtype(f: torch.Tensor, dtype: np.dtype | str) -> torch.Tensor:
    """f(x) rounded to the cache's storage dtype (float16 or float32; round to nearest even): the one
    implementation, used by the features job, ``dfr predict`` and ``dfr export``, so that the deployed f(x)
    is the evaluated one."""
    return f.float().to(torch.float16 if np.dtype(dtype) == np.float16 else torch.float32)


def extract(index_path: str | Path, split: str, out: str | Path, params: dict,
            weights_file: str | Path | None = None) -> dict:
    """Extract f(x) for every image of ``split`` ("train" or "test") of an index into one HDF5 file.

    params: backbone, weights (their identity, :func:`dfr.keys.weights_identity`, or a location), layers, pool,
    grid, padding, image_size, normalize, dtype, amp; and the runtime-only batch_size, num_workers, device,
    channels_last. ``weights_file``: the local file a ``sha256:`` identity names.
    """
    t_start = time.perf_counter()
    index = read_index(index_path)
    rows = index[index.split == split].reset_index(drop=True)
    if rows.empty:
        raise DFRError(f"{index_path}: no images in split {split!r}")
    device = compute.resolve_device(params.get("device", "auto"), params.get("device_class", "cpu"),
                                      params.get("amp", "none"))
    weights = backbones.weights_location(params["weights"], weights_file)
    model = backbones.build(params["backbone"], weights, params.get("padding") or "zeros")
    extractor = FeatureExtractor(model, params["layers"], pool=params["pool"], grid=params.get("grid")).to(device)
    if params.get("channels_last"):
        extractor = extractor.to(memory_format=torch.channels_last)
    pre = Preprocess(params["image_size"], params["normalize"])
    loader = torch.utils.data.DataLoader(
        ImageDataset(rows.path.tolist(), pre), batch_size=params["batch_size"], shuffle=False,
        num_workers=params.get("num_workers", 0), pin_memory=device.type == "cuda",
        worker_init_fn=_one_thread, persistent_workers=False, collate_fn=collate_images,
    )
    dtype = np.dtype(params.get("dtype", "float16"))
    amp = params.get("amp", "none")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    with torch.inference_mode():
        probe = extractor(torch.zeros(1, 3, pre.image_size, pre.image_size, device=device))
    c, h, w = probe.shape[1:]
    log.info("%s: %d images -> f(x) of shape %dx%dx%d (%s, %s)", split, len(rows), c, h, w,
             params["backbone"], ",".join(params["layers"]))
    check_space(out, len(rows) * c * h * w * dtype.itemsize)
    with atomic_path(out, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            # one chunk per image, each with a Fletcher-32 checksum: a garbled chunk fails when read
            feats = f.create_dataset("features", shape=(len(rows), c, h, w), dtype=dtype,
                                     chunks=(1, c, h, w), fletcher32=True)
            write_cache_meta(f, rows, params, split=split, index=str(index_path))
            start = 0
            t_loop = time.perf_counter()
            with torch.inference_mode():
                for x in tqdm(loader, desc=f"features {split}", unit="batch", mininterval=5):
                    x = checked(x).to(device, non_blocking=True)
                    if params.get("channels_last"):
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        fx = extractor(x)
                    stored = to_cache_dtype(fx, dtype).cpu().numpy()
                    if not np.isfinite(stored).all():
                        ok = np.isfinite(stored).reshape(len(x), -1).all(axis=1)
                        bad = rows.path[start + int(np.nonzero(~ok)[0][0])]
                        why = ("they exceed the float16 range of the cache: set features.dtype: float32"
                               if torch.isfinite(fx.float()).all() else
                               f"{params['backbone']} gave NaN/inf: check features.weights, or set "
                               "features.amp: none")
                        raise DFRError(f"{index_path}: non-finite features (e.g. for {bad}) in stage features, "
                                       f"split {split}: {why}")
                    feats[start:start + len(x)] = stored
                    start += len(x)
            t_end = time.perf_counter()
    stats = {"images": len(rows), "seconds_setup": t_loop - t_start, "seconds_loop": t_end - t_loop}
    log.info("wrote %s (%d images, %.1f images/s after %.1f s of set-up)", out, len(rows),
             len(rows) / stats["seconds_loop"], stats["seconds_setup"])
    return stats
