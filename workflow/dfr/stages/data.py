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

from dfr.io import DFRError, atomic_path, remake_hint, write_json
from dfr.shapes import IMAGE_EXTENSIONS

if TYPE_CHECKING:  # torch is imported where images are preprocessed, not to index or split
    import torch

log = logging.getLogger(__name__)

# The code version of the index and the validation split: dfr.keys reads it (without importing
# this module) into the params and keys of what it makes. Bump it when a change alters what is written.
CODE_VERSIONS = {"index": 1, "split": 1}  # MVTec AD 2's layout added without a bump: MVTec-layout output unchanged
# tests/test_golden.py: per version, the digests of the stage's fixed tiny input and of its rounded output
GOLDEN = {
    "index": {1: ("1e7b679bccb14f53", "53fcc8f5a9f82f8c")},
    "split": {1: ("ecb7ff62405a32be", "ac6fbcdafdf7baa1")},
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


def is_mvtec_ad2(croot: Path) -> bool:
    """Whether a category folder is in MVTec AD 2's layout (validation/ and test_public/ beside train/)."""
    return (croot / "test_public").is_dir() or (croot / "validation").is_dir()


def index_category(root: str | Path, category: str) -> pd.DataFrame:
    """Index one category in MVTec layout (or MVTec AD 2's, :func:`index_mvtec_ad2`), checking every file.

    Every problem found is reported (one line each, naming the file) in a single :class:`DFRError`.
    """
    croot = Path(root) / category
    if not croot.is_dir():
        raise DFRError(f"{croot}: category folder not found (is '{category}' a category of {root}?)")
    if is_mvtec_ad2(croot):
        return index_mvtec_ad2(croot)
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


AD2_PRIVATE = ("test_private", "test_private_mixed")  # MVTec AD 2's unlabelled test sets (the leaderboard's)


def index_mvtec_ad2(croot: Path) -> pd.DataFrame:
    """Index one category in MVTec AD 2's layout::

        train/good/*.png                    normal training images            split train
        validation/good/*.png               the held-out normals (dfr.data.holdout_split takes exactly these)
        test_public/{good,bad}/*.png        labelled test images              split test
        test_public/ground_truth/bad/<stem>_mask.png
        test_private/*.png, test_private_mixed/*.png   unlabelled            split private, label -1

    The private sets are indexed for the leaderboard submission only; no metric reads them. Every problem is
    reported in one :class:`DFRError`, one line each, naming the file."""
    problems: list[str] = []
    rows: list[dict] = []

    def add(p: Path, split: str, label: int, defect: str, image_id: str, mask: str = "") -> tuple[int, int] | None:
        try:
            size = _check_image(p)
        except DFRError as e:
            problems.append(str(e))
            return None
        rows.append(dict(image_id=image_id, split=split, label=label, defect=defect, path=str(p), mask_path=mask,
                         width=size[0], height=size[1]))
        return size

    def images(folder: Path, why: str) -> list[Path]:
        if not folder.is_dir():
            problems.append(f"{folder}: missing; {why}")
            return []
        files = _image_files(folder)
        if not files:
            problems.append(f"{folder}: no images (empty split)")
        problems.extend(_same_stem(files))
        return files

    for sub, why in (("train", "MVTec AD 2's normal training images are there"),
                     ("validation", "MVTec AD 2 holds out its normal validation images there (the thresholds "
                                    "are set on them)")):
        for p in images(croot / sub / "good", why):
            add(p, "train", 0, "good", f"{sub}/good/{p.stem}")
    test = croot / "test_public"
    for p in images(test / "good", "normal public test images are needed for every metric"):
        add(p, "test", 0, "good", f"test_public/good/{p.stem}")
    gt = test / "ground_truth" / "bad"
    bad = images(test / "bad", "the anomalous public test images are there")
    for p in bad:
        mp = gt / f"{p.stem}_mask.png"
        if not mp.is_file():
            problems.append(f"{p}: anomalous test image without a mask (expected {mp})")
            continue
        size = add(p, "test", 1, "bad", f"test_public/bad/{p.stem}", str(mp))
        if size:
            try:
                _check_mask(mp, size)
            except DFRError as e:
                problems.append(str(e))
    stems = {p.stem for p in bad}
    if gt.is_dir():
        for mp in _image_files(gt):
            if not mp.stem.endswith("_mask") or mp.stem[:-5] not in stems:
                problems.append(f"{mp}: a mask without its image (expected {test / 'bad' / mp.stem[:-5]}.png)")
    for sub in AD2_PRIVATE:
        folder = croot / sub
        if not folder.is_dir():
            log.warning("%s: missing; its images cannot be scored for the leaderboard submission", folder)
            continue
        for p in _image_files(folder):
            add(p, "private", -1, "", f"{sub}/{p.stem}")
    if problems:
        raise DFRError(f"{croot}: {len(problems)} problem(s) in the dataset (MVTec AD 2 layout):\n  "
                       + "\n  ".join(problems))
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
    private = df.split == "private"  # MVTec AD 2's unlabelled test sets: label -1
    bad = (~df.split.isin(["train", "test", "private"])
           | ~df.label.astype(str).isin(["0", "1"]) & ~(private & (df.label.astype(str) == "-1"))
           | (df.image_id.astype(str) == "") | (df.path.astype(str) == "") | df.image_id.duplicated())
    if bad.any():
        row = int(np.argmax(bad.to_numpy())) + 2
        raise DFRError(f"{path}: line {row} is not an index row (a split, a 0/1 label or -1 for a private image, "
                       "an image id and a path): "
                       "the file is truncated or corrupt; " + remake_hint(path))
    df["label"] = df.label.astype(int)
    return df


def holdout_split(index: pd.DataFrame, val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Hold out a seeded fraction of the normal training images as the validation set; in MVTec AD 2's
    layout, exactly its validation/ images (val_fraction and seed do not apply)."""
    train_ids = index.loc[index.split == "train", "image_id"].tolist()
    fixed = [i for i in train_ids if i.startswith("validation/")]
    if fixed:
        return {"train": sorted(i for i in train_ids if not i.startswith("validation/")), "val": sorted(fixed)}
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
    if any(i.startswith("validation/") for i in split["val"]):
        split["params"] = {"held_out": "the dataset's validation/ folder (MVTec AD 2)"}
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
