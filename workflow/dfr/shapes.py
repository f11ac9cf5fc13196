"""The shapes of the real benchmarks: per category, image counts and sizes.

Used to size jobs before a dataset is on disk (``dfr.resources``) and to generate full-size rehearsal
datasets (``dfr.synthetic``, ``shape: mvtec_ad`` or ``visa``).

* MVTec AD as published (Bergmann et al., CVPR 2019 / IJCV 2021): training images (all normal), test
  normal, test anomalous (each with a mask of the image's size), square side in pixels; grid, screw and
  zipper are grey-scale. Totals 3,629 / 467 / 1,258.
* VisA (Zou et al., ECCV 2022), counts of the official one-class split (``split_csv/1cls.csv``): totals
  8,659 / 962 / 1,200. Images are JPEGs of roughly 1.5 megapixels that vary by category; 1500×1000 is used
  for every category here (an upper-end size for memory and time estimates), masks PNG at the image's size.
"""

from __future__ import annotations

from typing import NamedTuple


class Shape(NamedTuple):
    n_train: int
    n_test_good: int
    n_test_anomalous: int
    width: int
    height: int
    grey: bool = False
    ext: str = ".png"
    texture: bool = False


def _mvtec(train, good, bad, side, grey=False, texture=False):
    return Shape(train, good, bad, side, side, grey, ".png", texture)


def _visa(train, good, bad):
    return Shape(train, good, bad, 1500, 1000, False, ".JPG", False)


MVTEC_AD = {
    "bottle": _mvtec(209, 20, 63, 900),
    "cable": _mvtec(224, 58, 92, 1024),
    "capsule": _mvtec(219, 23, 109, 1000),
    "carpet": _mvtec(280, 28, 89, 1024, texture=True),
    "grid": _mvtec(264, 21, 57, 1024, grey=True, texture=True),
    "hazelnut": _mvtec(391, 40, 70, 1024),
    "leather": _mvtec(245, 32, 92, 1024, texture=True),
    "metal_nut": _mvtec(220, 22, 93, 700),
    "pill": _mvtec(267, 26, 141, 800),
    "screw": _mvtec(320, 41, 119, 1024, grey=True),
    "tile": _mvtec(230, 33, 84, 840, texture=True),
    "toothbrush": _mvtec(60, 12, 30, 1024),
    "transistor": _mvtec(213, 60, 40, 1024),
    "wood": _mvtec(247, 19, 60, 1024, texture=True),
    "zipper": _mvtec(240, 32, 119, 1024, grey=True),
}

VISA = {
    "candle": _visa(900, 100, 100),
    "capsules": _visa(542, 60, 100),
    "cashew": _visa(450, 50, 100),
    "chewinggum": _visa(453, 50, 100),
    "fryum": _visa(450, 50, 100),
    "macaroni1": _visa(900, 100, 100),
    "macaroni2": _visa(900, 100, 100),
    "pcb1": _visa(904, 100, 100),
    "pcb2": _visa(901, 100, 100),
    "pcb3": _visa(905, 101, 100),
    "pcb4": _visa(904, 101, 100),
    "pipe_fryum": _visa(450, 50, 100),
}

BENCHMARKS = {"mvtec_ad": MVTEC_AD, "visa": VISA}
