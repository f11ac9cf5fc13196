"""What a run will fetch from the network, said when it is planned (a dry run included).

Planning-side (no torch). A benchmark data set (``kind: mvtec``, ``visa`` or ``mvtec_ad2``) is downloaded
when a category folder it needs is missing and no local ``archive`` is given; torchvision's ImageNet weights
when a ResNet backbone asks for ``imagenet`` and torch's cache holds no file of that model. The sizes are
approximate (the archives' published sizes; the weights' parameter counts × 4 bytes): a user on a metered or
slow link, or a compute node without internet, learns it before the run starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from dfr.planning import layout

# kind -> (name, images, approximate archive size in bytes)
DATASETS = {"mvtec": ("MVTec AD", 5354, 4.9e9), "visa": ("VisA", 10821, 1.9e9),
            "mvtec_ad2": ("MVTec AD 2", 8709, 32.7e9)}
# torchvision backbone -> parameters of its ImageNet weights
WEIGHT_PARAMS = {"resnet18": 11.7e6, "resnet34": 21.8e6, "resnet50": 25.6e6, "wide_resnet50_2": 68.9e6}


def torch_checkpoints() -> Path:
    """Where torchvision keeps downloaded weights: $TORCH_HOME/hub/checkpoints (torch's default home)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                        os.path.expanduser("~/.cache"), "torch")
    return Path(home) / "hub" / "checkpoints"


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def needed(cfgs: list[dict]) -> list[str]:
    """One line per download that a run of these configs (every experiment, study variant and ensemble member
    as a full config) will make; none when everything is there."""
    out, seen = [], set()
    for cfg in cfgs:
        for name, ds in cfg["datasets"].items():
            root = Path(layout.dataset_root(cfg, name))
            if ds["kind"] not in DATASETS or (ds["kind"], str(root)) in seen:
                continue
            missing = [c for c in ds["categories"] if not (root / c / "train").is_dir()]
            if missing and not ds.get("archive"):  # a local archive is extracted, not downloaded
                seen.add((ds["kind"], str(root)))
                title, images, size = DATASETS[ds["kind"]]
                out.append(f"data set {name}: {title} ({images} images, about {_gb(size)} to download and as "
                           f"much again to extract) into {root}/, for {len(missing)} missing categories")
        b = cfg["features"]["backbone"]
        if b in WEIGHT_PARAMS and cfg["features"]["weights"] == "imagenet":
            cache = torch_checkpoints()
            if ("weights", b) in seen or (cache.is_dir() and any(cache.glob(f"{b}-*.pth"))):
                continue
            seen.add(("weights", b))
            out.append(f"weights: torchvision's ImageNet {b} (about {_gb(WEIGHT_PARAMS[b] * 4)}) into {cache}/")
    return out
