"""What a category holds before any job has run: its images and pixels, and the images a model is fitted on.

A planning module (overrides → config → keys → layout → workload → plan): from the category's index once it
exists; before, from the known shape of the dataset (MVTec AD, VisA, a synthetic category) or the files on
disk. The resource estimates size jobs from it, and the plan decides from it whether PCA subsamples.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from dfr.planning import layout

from dfr import shapes


class Workload(NamedTuple):
    """Images and pixels of one category (train includes the held-out validation images)."""
    n_train: int
    n_test: int
    train_pixels: int
    test_pixels: int
    max_image_pixels: int
    exact: bool = True  # False for a guess (nothing on disk, no known shape)
    n_private: int = 0  # MVTec AD 2's unlabelled private test images (scored for the submission only)
    n_validation: int = 0  # MVTec AD 2's validation images (within n_train): its held-out normals


_INDEX_CACHE: dict[tuple[str, int], Workload] = {}


def from_index(path: Path) -> Workload:
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _INDEX_CACHE:
        import csv

        n_train = n_test = n_private = n_val = train_px = test_px = max_px = 0
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                px = int(row["width"]) * int(row["height"])
                max_px = max(max_px, px)
                if row["split"] == "train":
                    n_train, train_px = n_train + 1, train_px + px
                    n_val += row["image_id"].startswith("validation/")  # as dfr.data.holdout_split takes them
                elif row["split"] == "test":  # not MVTec AD 2's private images: no stage but the submission's
                    n_test, test_px = n_test + 1, test_px + px
                else:
                    n_private += 1
        _INDEX_CACHE[key] = Workload(n_train, n_test, train_px, test_px, max_px, True, n_private, n_val)
    return _INDEX_CACHE[key]


def from_shape(n_train: int, n_test: int, width: int, height: int, exact: bool = True) -> Workload:
    px = width * height
    return Workload(n_train, n_test, n_train * px, n_test * px, px, exact)


def _images(d: Path) -> list[str]:
    """The images of a folder as the index counts them (no hidden files); none when it does not exist."""
    return [os.path.join(r, n) for r, _, files in os.walk(d) for n in sorted(files)
            if not n.startswith(".") and os.path.splitext(n)[1].lower() in shapes.IMAGE_EXTENSIONS]


_FOLDER_CACHE: dict[tuple, Workload | None] = {}


def _stamp(folder: Path) -> tuple:
    """The modification times of a category folder, of its split folders and of theirs: MVTec AD's layout puts
    every image one level below a split, so adding, removing or renaming one changes a time here."""
    try:
        with os.scandir(folder) as it:
            splits = sorted(e.path for e in it if e.is_dir())
    except OSError:
        return ()
    out = [(os.fspath(folder), os.stat(folder).st_mtime_ns)]
    for d in splits:
        with os.scandir(d) as it:
            out += sorted((e.path, e.stat().st_mtime_ns) for e in it if e.is_dir())
        out.append((d, os.stat(d).st_mtime_ns))
    return tuple(out)


def from_folder(folder: Path) -> Workload | None:
    """Counted from the files on disk (image headers only), for a folder dataset not yet indexed; once per state
    of its folders in a process (Snakemake sizes every job of a category, a study many per category)."""
    key = (os.fspath(folder), _stamp(folder))
    if key not in _FOLDER_CACHE:
        _FOLDER_CACHE[key] = _count_folder(folder)
    return _FOLDER_CACHE[key]


def _count_folder(folder: Path) -> Workload | None:
    train, test = _images(folder / "train"), _images(folder / "test")
    private = n_val = 0
    if (folder / "test_public").is_dir() or (folder / "validation").is_dir():  # MVTec AD 2's layout
        n_val = len(_images(folder / "validation"))
        train = train + _images(folder / "validation")
        test = [p for p in _images(folder / "test_public") if "ground_truth" not in Path(p).parts]
        private = len(_images(folder / "test_private")) + len(_images(folder / "test_private_mixed"))
    if not train and not test:
        return None
    from PIL import Image  # one image header, for the size

    try:
        with Image.open((train or test)[0]) as im:
            w, h = im.size
    except OSError:
        w, h = 1024, 1024
    return from_shape(len(train), len(test), w, h)._replace(n_private=private, n_validation=n_val)


def workload(cfg: dict, dataset: str, category: str) -> Workload:
    """A category's images and pixels; a generous guess (``exact`` False) when nothing tells."""
    idx = Path(layout.fill(layout.patterns(cfg["results"])["index"], {"dataset": dataset, "category": category}))
    if idx.is_file():
        return from_index(idx)
    ds = cfg["datasets"][dataset]
    if ds["kind"] == "synthetic":
        g = ds.get("synthetic", {})
        defects = len(g.get("defects", shapes.DEFECTS))
        ad2 = g.get("layout") == "mvtec_ad2"
        if g.get("shape"):
            spec = shapes.shaped_spec(category, g["shape"], g.get("size_scale", 1.0))
            n_train, n_good, per_kind = shapes.shaped_counts(category, g["shape"], g.get("scale", 1.0), defects)
            n_test = n_good + sum(per_kind)
            private = shapes.shaped_private(category, g["shape"], g.get("scale", 1.0)) or n_test
            n_val = (shapes.shaped_validation(category, g["shape"], g.get("scale", 1.0))
                     or shapes.ad2_validation_default(n_train))
            return from_shape(n_train, n_test, spec.width, spec.height)._replace(
                n_private=2 * private if ad2 else 0, n_validation=n_val if ad2 else 0)
        spec = shapes.CATEGORIES[category]
        n_test = g.get("n_test_good", 10) + g.get("n_test_defect", 5) * defects
        n_train = g.get("n_train", 40)
        return from_shape(n_train, n_test, spec.width, spec.height)._replace(  # as dfr.synthetic.to_mvtec_ad2 writes
            n_private=2 * n_test if ad2 else 0, n_validation=shapes.ad2_validation_default(n_train) if ad2 else 0)
    table = {"mvtec": shapes.MVTEC_AD, "visa": shapes.VISA}.get(ds["kind"], {})
    if ds["kind"] == "mvtec_ad2" and not (Path(layout.dataset_root(cfg, dataset)) / category).is_dir():
        # before extraction: its image size and private counts are known, the other counts are even shares
        # of the published totals (dfr.shapes.MVTEC_AD2)
        s = shapes.MVTEC_AD2[category]
        return from_shape(s.n_train + s.n_validation, s.n_test_good + s.n_test_anomalous, s.width, s.height,
                          exact=False)._replace(n_private=2 * s.n_private, n_validation=s.n_validation)
    if category in table:
        s = table[category]
        return from_shape(s.n_train, s.n_test_good + s.n_test_anomalous, s.width, s.height)
    found = from_folder(Path(layout.dataset_root(cfg, dataset)) / category)
    return found or from_shape(1000, 250, 1500, 1000, exact=False)


def held_out(cfg: dict, wl: Workload) -> int:
    """The held-out normal images of a category, as dfr.data.holdout_split takes them: MVTec AD 2's validation
    images, else val_fraction of the training images (at least one when the fraction is above 0)."""
    if wl.n_validation:
        return wl.n_validation
    f = cfg["data"]["val_fraction"]
    return max(1, int(round(f * wl.n_train))) if f > 0 else 0


def n_fit_images(cfg: dict, dataset: str, category: str) -> int | None:
    """The training images a model is fitted on (train minus the held-out ones, as dfr.data.holdout_split
    takes them); None when the category's count is a guess."""
    wl = workload(cfg, dataset, category)
    if not wl.exact:
        return None
    return max(0, wl.n_train - held_out(cfg, wl))
