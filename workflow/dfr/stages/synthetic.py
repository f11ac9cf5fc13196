"""A deterministic synthetic dataset in MVTec layout, with exact masks: the demo's and the tests' data.

Categories (two textures, one object, varied sizes and colour modes):

=========  ========  ==========  ====================================================
name       kind      size (WxH)  normal appearance
=========  ========  ==========  ====================================================
weave      texture   256x256     RGB woven sinusoid, random phase, fine noise
grain      texture   200x200     greyscale (saved as 8-bit grey) smoothed noise
disc       object    240x192     shaded orange disc, jittered, on a blue-grey ground
=========  ========  ==========  ====================================================

Defect kinds: ``scratch`` (thin bright or dark line), ``stain`` (dark irregular blob),
``missing`` (a part replaced by background), ``colour`` (a region's colour or brightness shifted).
Every image is a pure function of (seed, category, split, index).

**Full-size rehearsals** (``shape: mvtec_ad`` or ``visa``): the categories take the real benchmarks' names,
image counts, sizes, colour modes and file formats (:mod:`dfr.shapes`); textures are drawn like ``weave``
(``grain`` when grey), objects like ``disc``, and the anomalous test images are spread over the defect
kinds. ``scale`` multiplies the image counts (at least 2 training and 1 of each test kind remain) and
``size_scale`` the image sides, for smaller runs of the same DAG.
"""

from __future__ import annotations

import logging
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from dfr.io import DFRError, write_json
from dfr.shapes import (CATEGORIES, DEFECTS, CategorySpec, ad2_validation_default, shaped_counts, shaped_private,
                     shaped_spec, shaped_validation)

log = logging.getLogger(__name__)

# The code version of the generator: dfr.keys reads it (without importing this module) into the params of
# the synthetic rule. Bump it when a change alters the images or masks it draws.
CODE_VERSIONS = {"synthetic": 1}

def _rng(seed: int, category: str, split: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(category.encode()), zlib.crc32(split.encode()), i])


def _grid(spec: CategorySpec) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(spec.width, dtype=np.float64), np.arange(spec.height, dtype=np.float64))


def _normal(spec: CategorySpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A normal image (H, W, 3) float in [0, 1] and its foreground (where defects may go)."""
    x, y = _grid(spec)
    h, w = spec.height, spec.width
    s = min(h, w)
    if spec.look == "weave":
        p = 16.0 * max(1.0, s / 256)  # the same weave at every size: period relative to the image
        px, py = rng.uniform(0, 2 * np.pi, 2)
        v = 0.5 + 0.22 * np.sin(2 * np.pi * x / p + px) * np.sin(2 * np.pi * y / p + py)
        v = v + 0.03 * rng.standard_normal((h, w))
        img = np.stack([v * 0.9 + 0.05, v * 0.75 + 0.1, v * 0.45 + 0.2], axis=-1)
        fg = np.ones((h, w), bool)
    elif spec.look == "grain":
        n = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma=2.0 * max(1.0, s / 200))
        v = 0.5 + 0.35 * n / (n.std() + 1e-9) * 0.5
        img = np.repeat(v[..., None], 3, axis=-1)
        fg = np.ones((h, w), bool)
    elif spec.look == "disc":
        cx = w / 2 + rng.uniform(-6, 6)
        cy = h / 2 + rng.uniform(-6, 6)
        r0 = min(w, h) * 0.36 + rng.uniform(-3, 3)
        bg = np.array([0.35, 0.4, 0.45]) + 0.015 * rng.standard_normal((h, w, 1))
        d = np.hypot(x - cx, y - cy)
        fg = d <= r0
        shade = 0.75 + 0.25 * np.cos(np.clip(d / r0, 0, 1) * np.pi / 2)
        ring = 0.06 * np.sin(d / 3.0)
        disc = np.stack([0.95 * shade + ring, 0.55 * shade + ring, 0.15 * shade + ring / 2], axis=-1)
        img = np.where(fg[..., None], disc, bg)
        img = img + 0.01 * rng.standard_normal((h, w, 3))
    else:  # pragma: no cover - guarded by CATEGORIES
        raise DFRError(f"unknown synthetic look {spec.look!r}")
    return np.clip(img, 0, 1), fg


def _point_in(fg: np.ndarray, rng: np.random.Generator, margin: int) -> tuple[float, float]:
    h, w = fg.shape
    inner = np.zeros_like(fg)
    inner[margin:h - margin, margin:w - margin] = True
    # fg eroded `margin` times by the 4-neighbour cross (outside counts as background), in one pass:
    # the pixels whose taxicab distance to the background exceeds the margin
    eroded = ndimage.distance_transform_cdt(np.pad(fg, 1), metric="taxicab")[1:-1, 1:-1] > margin
    ys, xs = np.nonzero(eroded & inner)
    if len(xs) == 0:
        ys, xs = np.nonzero(fg)
    k = rng.integers(len(xs))
    return float(xs[k]), float(ys[k])


def _defect(spec: CategorySpec, img: np.ndarray, fg: np.ndarray, kind: str,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Apply one defect; returns the new image and its exact mask."""
    x, y = _grid(spec)
    h, w = fg.shape
    s = min(h, w)
    img = img.copy()
    if kind == "scratch":
        x0, y0 = _point_in(fg, rng, margin=s // 6)
        ang = rng.uniform(0, np.pi)
        length = rng.uniform(0.25, 0.4) * s
        dx, dy = np.cos(ang) * length / 2, np.sin(ang) * length / 2
        ax, ay, bx, by = x0 - dx, y0 - dy, x0 + dx, y0 + dy
        t = np.clip(((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2), 0, 1)
        dist = np.hypot(x - (ax + t * (bx - ax)), y - (ay + t * (by - ay)))
        mask = (dist <= rng.uniform(1.5, 2.5) * max(1.0, s / 256)) & fg
        value = 0.97 if rng.random() < 0.5 else 0.05
        img[mask] = value
    elif kind == "stain":
        cx, cy = _point_in(fg, rng, margin=s // 6)
        r = rng.uniform(0.06, 0.1) * s
        theta = np.arctan2(y - cy, x - cx)
        ph = rng.uniform(0, 2 * np.pi, 2)
        rr = r * (1 + 0.25 * np.sin(3 * theta + ph[0]) + 0.15 * np.sin(5 * theta + ph[1]))
        mask = (np.hypot(x - cx, y - cy) <= rr) & fg
        stain = np.array([0.25, 0.18, 0.1])
        img[mask] = 0.35 * img[mask] + 0.65 * stain
    elif kind == "missing":
        if spec.kind == "object":
            cx, cy = _point_in(fg, rng, margin=2)
            r = rng.uniform(0.12, 0.18) * s
            ys, xs = np.nonzero(fg)
            ex, ey = xs.mean(), ys.mean()
            # bite out a piece at the rim: a circle centred on the object's edge
            ang = rng.uniform(0, 2 * np.pi)
            rad = np.sqrt(fg.sum() / np.pi)
            cx, cy = ex + rad * np.cos(ang), ey + rad * np.sin(ang)
            mask = (np.hypot(x - cx, y - cy) <= r) & fg
            bg = np.array([0.35, 0.4, 0.45])
            img[mask] = bg + 0.015 * rng.standard_normal((int(mask.sum()), 1))
        else:
            cx, cy = _point_in(fg, rng, margin=s // 6)
            half = rng.uniform(0.06, 0.1) * s
            mask = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half * rng.uniform(0.6, 1.0))
            img[mask] = img[fg].mean(axis=0)  # the pattern is gone: flat fill
    elif kind == "colour":
        cx, cy = _point_in(fg, rng, margin=s // 6)
        rx, ry = rng.uniform(0.08, 0.13, 2) * s
        mask = (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1) & fg
        if spec.grey:
            img[mask] = np.clip(img[mask] + 0.3, 0, 1)
        else:
            img[mask] = img[mask][:, [2, 0, 1]] * 0.9 + np.array([0.0, 0.05, 0.25])
    else:
        raise DFRError(f"unknown synthetic defect kind {kind!r}; choose from {', '.join(DEFECTS)}")
    if not mask.any():  # pragma: no cover - defect placement always lands on the foreground
        raise AssertionError(f"empty defect mask for {spec.name}/{kind}")
    return np.clip(img, 0, 1), mask


def _save(img: np.ndarray, path: Path, grey: bool) -> None:
    a = (img * 255 + 0.5).astype(np.uint8)
    im = Image.fromarray(a[..., 0], "L") if grey else Image.fromarray(a, "RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, quality=95)
    else:
        im.save(path, compress_level=1)  # lossless either way; level 1 writes large images ~5x faster


def generate_category(out_root: str | Path, category: str, *, n_train: int = 40, n_test_good: int = 10,
                      n_test_defect: int = 5, defects: tuple[str, ...] = DEFECTS, seed: int = 0,
                      shape: str | None = None, scale: float = 1.0, size_scale: float = 1.0,
                      layout: str = "mvtec") -> Path:
    """Write one synthetic category in MVTec layout under ``out_root/category`` (atomically).

    With ``shape`` (mvtec_ad | visa | mvtec_ad2) the category is one of that benchmark's, with its counts (times
    ``scale``) and image size (times ``size_scale``); ``n_train``, ``n_test_good``, ``n_test_defect`` are
    then ignored. With ``layout: mvtec_ad2``, in MVTec AD 2's layout (:func:`to_mvtec_ad2`; with shape
    mvtec_ad2, its validation and private counts).
    """
    for d in defects:
        if d not in DEFECTS:
            raise DFRError(f"unknown synthetic defect kind {d!r}; choose from {', '.join(DEFECTS)}")
    n_val = n_private = None
    if shape:
        spec = shaped_spec(category, shape, size_scale)
        n_val, n_private = shaped_validation(category, shape, scale), shaped_private(category, shape, scale)
        n_train, n_test_good, per_kind = shaped_counts(category, shape, scale, len(defects))
        kinds = list(zip(defects, per_kind))
    else:
        if category not in CATEGORIES:
            raise DFRError(f"unknown synthetic category {category!r}; choose from {', '.join(CATEGORIES)}")
        spec = CATEGORIES[category]
        kinds = [(d, n_test_defect) for d in defects]
    final = Path(out_root) / category
    tmp = Path(out_root) / f".{category}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for i in range(n_train):
        img, _ = _normal(spec, _rng(seed, category, "train", i))
        _save(img, tmp / "train" / "good" / f"{i:03d}{spec.ext}", spec.grey)
    for i in range(n_test_good):
        img, _ = _normal(spec, _rng(seed, category, "test/good", i))
        _save(img, tmp / "test" / "good" / f"{i:03d}{spec.ext}", spec.grey)
    for d, n in kinds:
        for i in range(n):
            rng = _rng(seed, category, f"test/{d}", i)
            img, fg = _normal(spec, rng)
            img, mask = _defect(spec, img, fg, d, rng)
            _save(img, tmp / "test" / d / f"{i:03d}{spec.ext}", spec.grey)
            m = Image.fromarray((mask * 255).astype(np.uint8), "L")
            mp = tmp / "ground_truth" / d / f"{i:03d}_mask.png"
            mp.parent.mkdir(parents=True, exist_ok=True)
            m.save(mp)
    write_json(tmp / "synthetic.json", {
        "category": category, "kind": spec.kind, "size": [spec.width, spec.height], "grey": spec.grey,
        "n_train": n_train, "n_test_good": n_test_good, "n_test_defect": dict(kinds),
        "defects": [d for d, _ in kinds], "seed": seed, "shape": shape, "scale": scale, "size_scale": size_scale,
    })
    if layout == "mvtec_ad2":
        to_mvtec_ad2(tmp, spec, seed, category, n_val=n_val, n_private=n_private)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    log.info("wrote synthetic category %s to %s", category, final)
    return final


def to_mvtec_ad2(croot: Path, spec: "CategorySpec", seed: int, category: str, *, n_val: int | None = None,
                 n_private: int | None = None) -> None:
    """Rearrange a generated MVTec-layout category into MVTec AD 2's, in place: the last ``n_val`` (default a
    quarter, at least two) of train/good move to validation/good; test/ becomes test_public/ with every defect
    kind in bad/ (named <kind>_<nnn>) and its masks in test_public/ground_truth/bad/; test_private/ and
    test_private_mixed/ get ``n_private`` (default: as many as test_public) unlabelled images each, normal and
    defective, named NNN_regular and NNN_mixed."""
    train = sorted((croot / "train" / "good").iterdir())
    n_val = n_val or ad2_validation_default(len(train))
    for p in train[len(train) - n_val:]:
        _move(p, croot / "validation" / "good" / p.name)
    pub = croot / "test_public"
    for d in sorted((croot / "test").iterdir()):
        for p in sorted(d.iterdir()):
            if d.name == "good":
                _move(p, pub / "good" / p.name)
            else:
                _move(p, pub / "bad" / f"{d.name}_{p.name}")
                _move(croot / "ground_truth" / d.name / f"{p.stem}_mask.png",
                      pub / "ground_truth" / "bad" / f"{d.name}_{p.stem}_mask.png")
    shutil.rmtree(croot / "test")
    shutil.rmtree(croot / "ground_truth", ignore_errors=True)
    n_private = n_private or sum(1 for _ in pub.glob("*/*.*"))
    for sub, suffix in (("test_private", "regular"), ("test_private_mixed", "mixed")):
        for i in range(n_private):
            rng = _rng(seed, category, sub, i)
            img, fg = _normal(spec, rng)
            if i % 2:
                img, _ = _defect(spec, img, fg, DEFECTS[i // 2 % len(DEFECTS)], rng)
            _save(img, croot / sub / f"{i:03d}_{suffix}{spec.ext}", spec.grey)


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.rename(dst)
