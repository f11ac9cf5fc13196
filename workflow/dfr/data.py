"""Datasets in MVTec AD layout: index, validate, hold out normals, load images.

A category folder looks like::

    <category>/train/good/*.png
    <category>/test/good/*.png
    <category>/test/<defect>/*.png
    <category>/ground_truth/<defect>/<stem>_mask.png

The index is one CSV per category; every later stage reads images through it.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image, ImageFile

from .io import DFRError, atomic_path, remake_hint, write_json
from .shapes import IMAGE_EXTENSIONS

if TYPE_CHECKING:  # torch is imported where images are preprocessed, not to index or split
    import torch

log = logging.getLogger(__name__)

# The code version of the index and the validation split: dfr.keys reads it (without importing
# this module) into the params and keys of what it makes. Bump it when a change alters what is written.
CODE_VERSIONS = {"index": 1, "split": 1}
# tests/test_golden.py: per version, the digests of the stage's fixed tiny input and of its rounded output
GOLDEN = {
    "index": {1: ("22773164f0b2b22b", "53fcc8f5a9f82f8c")},
    "split": {1: ("38531c3748a3be24", "ac6fbcdafdf7baa1")},
}

INDEX_COLUMNS = ["image_id", "split", "label", "defect", "path", "mask_path", "width", "height"]

# Truncated files must fail loudly, never decode as half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _image_files(folder: Path) -> list[Path]:
    """Image files of a folder, sorted; hidden and stray files (.DS_Store, Thumbs.db, readme.txt) ignored."""
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _same_stem(files: list[Path]) -> list[str]:
    """Problems for files of one folder whose names differ only in extension (they would share an id)."""
    by_stem: dict[str, list[str]] = {}
    for p in files:
        by_stem.setdefault(p.stem, []).append(p.name)
    return [f"{files[0].parent}: {', '.join(names)} differ only in extension (one image id each is needed: "
            "remove or rename all but one)" for names in by_stem.values() if len(names) > 1]


def fingerprint(root: str | Path, category: str) -> str:
    """What the index of a category depends on: the relative path, size and modification time of every image
    and mask under it, hashed (its count shown). Cheap: one stat per file, no file is opened. A changed,
    added, removed or replaced file changes it; so does `touch`. "absent" while the folder does not exist."""
    import hashlib

    croot = Path(root) / category
    if not croot.is_dir():
        return "absent"
    entries = []
    stack = [croot]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    stack.append(Path(e.path))
                elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                    st = e.stat()
                    entries.append(f"{os.path.relpath(e.path, croot)}\0{st.st_size}\0{st.st_mtime_ns}")
    entries.sort()
    h = hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]
    return f"{len(entries)} files {h}"


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


# What Pillow raises for a file it cannot open or decode, besides FileNotFoundError: UnidentifiedImageError (an
# OSError) for an unknown format, OSError for truncated or broken data, ValueError and TypeError for bad modes and
# headers, DecompressionBombError (not an OSError) above twice Image.MAX_IMAGE_PIXELS; some of its decoders let
# SyntaxError, EOFError, struct.error or zlib.error through.
PIL_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, struct.error, zlib.error,
              Image.DecompressionBombError)


@contextmanager
def open_image(path: str | Path, what: str = "image", max_pixels: int | None = None):
    """``Image.open`` with every error Pillow raises turned into a :class:`DFRError` that names the file; with
    ``max_pixels``, an image whose header declares more pixels is refused before a byte of it is decoded."""
    try:
        with _open(path, max_pixels) as im:
            if max_pixels and im.width * im.height > max_pixels:
                raise DFRError(f"{path}: {what} of {im.width}x{im.height} = {im.width * im.height:,} pixels, above "
                               f"the limit of {max_pixels:,}: not decoded (a decompression bomb, or a scan too large "
                               "to score; raise the limit with --max-pixels if it is genuine)")
            yield im
    except FileNotFoundError:
        raise DFRError(f"{path}: {what} file not found") from None
    except Image.DecompressionBombError as e:
        raise DFRError(f"{path}: {what} too large to decode safely ({e}); downscale it or remove it") from None
    except PIL_ERRORS as e:
        raise DFRError(f"{path}: unreadable or truncated {what} ({type(e).__name__}: {e})") from None


def _open(path: str | Path, max_pixels: int | None) -> Image.Image:
    """Image.open; with a limit of our own, Pillow's bomb check (at twice its limit) stands aside for it."""
    if not max_pixels:
        return Image.open(path)
    pillows = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = pillows


def load_mask(path: str | Path) -> np.ndarray:
    """A ground-truth mask as a boolean array (any non-zero pixel is anomalous)."""
    with open_image(path, "mask") as im:
        a = np.asarray(im)
    if a.ndim == 3:
        a = a.max(axis=2)
    return a > 0


def _check_image(path: Path) -> tuple[int, int]:
    """The image's (width, height), decoded whole so that a truncated file fails here."""
    with open_image(path, "image") as im:
        im.load()
        return im.size


def _check_mask(mask_path: Path, image_size: tuple[int, int]) -> None:
    with open_image(mask_path, "mask") as im:
        im.load()
        size = im.size
        a = np.asarray(im)
    if size != image_size:
        raise DFRError(
            f"{mask_path}: mask is {size[0]}x{size[1]} but its image is {image_size[0]}x{image_size[1]}"
        )
    values = np.unique(a)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6])
        raise DFRError(
            f"{mask_path}: mask is not binary (values {shown}{', ...' if len(values) > 6 else ''}); "
            "expected 0 for normal and one non-zero value for anomalous pixels"
        )


def index_category(root: str | Path, category: str) -> pd.DataFrame:
    """Index one category in MVTec layout, checking every file.

    Every problem found is reported (one line each, naming the file) in a single :class:`DFRError`.
    """
    croot = Path(root) / category
    if not croot.is_dir():
        raise DFRError(f"{croot}: category folder not found (is '{category}' a category of {root}?)")
    problems: list[str] = []
    rows: list[dict] = []

    def check_image(p: Path) -> tuple[int, int] | None:
        try:
            return _check_image(p)
        except DFRError as e:
            problems.append(str(e))
            return None

    train_good = croot / "train" / "good"
    if not train_good.is_dir():
        problems.append(f"{train_good}: missing; an MVTec-layout category needs normal training images there")
    else:
        train_files = _image_files(train_good)
        if not train_files:
            problems.append(f"{train_good}: no images (empty split)")
        problems += _same_stem(train_files)
        for p in train_files:
            size = check_image(p)
            if size:
                rows.append(dict(image_id=f"train/good/{p.stem}", split="train", label=0, defect="good",
                                 path=str(p), mask_path="", width=size[0], height=size[1]))
    test_dir = croot / "test"
    gt_dir = croot / "ground_truth"
    has_gt = gt_dir.is_dir()
    if not test_dir.is_dir():
        problems.append(f"{test_dir}: missing; an MVTec-layout category needs a test folder")
        defect_dirs = []
    else:
        defect_dirs = _subdirs(test_dir)
        if not defect_dirs:
            problems.append(f"{test_dir}: no test subfolders (expected test/good and test/<defect>)")
        elif not (test_dir / "good").is_dir():
            problems.append(f"{test_dir / 'good'}: missing; normal test images are needed for every metric")
        elif all(d.name == "good" for d in defect_dirs):
            problems.append(f"{test_dir}: no anomalous test images (only test/good)")
    for d in defect_dirs:
        files = _image_files(d)
        if not files:
            problems.append(f"{d}: no images (empty split)")
        problems += _same_stem(files)
        anomalous = d.name != "good"
        for p in files:
            size = check_image(p)
            if size is None:
                continue
            mask = ""
            if anomalous and has_gt:
                mp = gt_dir / d.name / f"{p.stem}_mask.png"
                if not mp.is_file():
                    problems.append(f"{p}: anomalous test image without a mask (expected {mp})")
                    continue
                try:
                    _check_mask(mp, size)
                except DFRError as e:
                    problems.append(str(e))
                    continue
                mask = str(mp)
            rows.append(dict(image_id=f"test/{d.name}/{p.stem}", split="test", label=int(anomalous),
                             defect=d.name, path=str(p), mask_path=mask, width=size[0], height=size[1]))
    if problems:
        raise DFRError(f"{croot}: {len(problems)} problem(s) in the dataset:\n  " + "\n  ".join(problems))
    if not has_gt:
        log.warning("%s: no ground_truth folder; pixel metrics will be skipped", croot)
    return pd.DataFrame(rows, columns=INDEX_COLUMNS)


def write_index(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_index(path: str | Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, keep_default_na=False, dtype={"mask_path": str, "defect": str})
    except FileNotFoundError:
        raise DFRError(f"{path}: index not found") from None
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as e:
        raise DFRError(f"{path}: not a readable index, truncated or corrupt ({str(e)[:200]}); "
                       + remake_hint(path)) from None
    missing = set(INDEX_COLUMNS) - set(df.columns)
    if missing:
        raise DFRError(f"{path}: not a DFR index (missing columns {sorted(missing)})")
    bad = (~df.split.isin(["train", "test"]) | ~df.label.astype(str).isin(["0", "1"])
           | (df.image_id.astype(str) == "") | (df.path.astype(str) == "") | df.image_id.duplicated())
    if bad.any():
        row = int(np.argmax(bad.to_numpy())) + 2
        raise DFRError(f"{path}: line {row} is not an index row (a split, a 0/1 label, an image id and a path): "
                       f"the file is truncated or corrupt; " + remake_hint(path))
    df["label"] = df.label.astype(int)
    return df


def holdout_split(index: pd.DataFrame, val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Hold out a seeded fraction of the normal training images as the validation set."""
    train_ids = index.loc[index.split == "train", "image_id"].tolist()
    n_val = int(round(val_fraction * len(train_ids)))
    if val_fraction > 0:
        n_val = max(1, n_val)
    if n_val >= len(train_ids):
        raise DFRError(
            f"val_fraction={val_fraction} leaves no training images out of {len(train_ids)}"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(train_ids))
    val = sorted(train_ids[i] for i in perm[:n_val])
    train = sorted(train_ids[i] for i in perm[n_val:])
    return {"train": train, "val": val}


def write_split(index_path: str | Path, out: str | Path, val_fraction: float, seed: int) -> dict:
    index = read_index(index_path)
    split = holdout_split(index, val_fraction, seed)
    split["params"] = {"val_fraction": val_fraction, "seed": seed}
    write_json(out, split)
    return split


@dataclass(frozen=True)
class ImageError:
    """An image that could not be loaded, carried out of a loader worker as data: an exception raised in a
    worker would reach the user wrapped in the worker's traceback."""

    message: str


def collate_images(items: list) -> "torch.Tensor | ImageError":
    """A batch of preprocessed images, or the first :class:`ImageError` among them."""
    import torch

    failed = next((x for x in items if isinstance(x, ImageError)), None)
    return failed if failed is not None else torch.stack(items)


def checked(batch: "torch.Tensor | ImageError") -> "torch.Tensor":
    """A batch of :func:`collate_images`; its image error raised here, with the file's own message."""
    if isinstance(batch, ImageError):
        raise DFRError(batch.message)
    return batch
