"""Anomaly scoring (§3.4): error maps A(x), upsampled heatmaps Ã(x), top-k image scores s(x)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import pandas as pd

from dfr.io import FORMATS, DFRError, atomic_path, check_format, check_space, read_json, remake_hint, versions, device_info

if TYPE_CHECKING:
    import torch

    from dfr.stages.cache import FeatureCache

log = logging.getLogger(__name__)
# torch is imported where tensors are made (A(x) from a model, the border and s(x)): the metrics job reads
# maps.h5 and scores.csv through this module without it (its import is 3-4 s of CPU a job)

# The code version of the error maps A(x) (maps.h5) and the image scores s(x) (scores.csv): dfr.keys reads it (without importing
# this module) into the params and keys of what it makes. Bump it when a change alters what is written.
CODE_VERSIONS = {"maps": 1, "scores": 1}
# tests/test_golden.py: per version, the digests of the stage's fixed tiny input and of its rounded output
GOLDEN = {
    "maps": {1: ("d1ccc655c99c3c7e", "768a0603208766ad")},
    "scores": {1: ("189b5b20147e4932", "5e8347bceae856fe")},
}

SCORE_COLUMNS = ["image_id", "split", "label", "defect", "score", "path", "mask_path", "height", "width"]


def _check_border(a: np.ndarray, border: int) -> None:
    h, w = a.shape[-2:]
    if border < 0 or 2 * border >= min(h, w):
        raise DFRError(f"scoring.border must be between 0 and {(min(h, w) - 1) // 2} for a {h}x{w} map, got {border}")


def replicate_border(a: torch.Tensor, border: int) -> torch.Tensor:
    """A(x) [N, H, W] with its outer ``border`` cells replaced by the nearest interior cell (edge replication):
    the one implementation, used by the pipeline (:func:`without_border`), ``dfr predict`` and ``dfr export``
    (traceable: ``border`` is a Python int)."""
    if not border:
        return a
    import torch.nn.functional as F

    b = border
    return F.pad(a[:, None, b:-b, b:-b], (b, b, b, b), mode="replicate")[:, 0]


def top_k_mean(a: torch.Tensor, k: int, border: int = 0) -> torch.Tensor:
    """s(x) [N]: the mean of the k largest values of A(x) [N, H, W], without ``border`` cells at each edge: the
    one implementation, used by the pipeline (:func:`top_k_score`), ``dfr predict`` and ``dfr export``."""
    inner = a[:, border:-border, border:-border] if border else a
    return inner.flatten(1).topk(k, dim=1).values.mean(dim=1)


def without_border(a: np.ndarray, border: int) -> np.ndarray:
    """A(x) with its outer ``border`` cells replaced by the nearest interior cell (:func:`replicate_border`).

    Beyond the paper (§8.3): the backbone's zero padding makes features near the image edge unlike any in
    the interior, which can raise A(x) along the border of every image; excluding that margin from s(x)
    and from the heatmaps removes it (a defect inside the margin is then seen only through its neighbours)."""
    if not border:
        return a
    _check_border(a, border)
    import torch

    a = np.asarray(a)
    t = torch.from_numpy(np.ascontiguousarray(a.reshape(-1, *a.shape[-2:])))
    return replicate_border(t, border).numpy().reshape(a.shape)


def top_k_score(a: np.ndarray | torch.Tensor, k: int, border: int = 0) -> np.ndarray:
    """s(x) = mean of the k largest values of A(x) (of its interior, without ``border`` cells at each edge);
    ``a`` has shape [N, H, W] (or [H, W]). Checks k and the border, then :func:`top_k_mean`."""
    import torch

    a = torch.as_tensor(np.asarray(a, dtype=np.float32))
    if a.ndim == 2:
        a = a[None]
    if border:
        _check_border(a, border)
    n_inner = (a.shape[1] - 2 * border) * (a.shape[2] - 2 * border)
    if not 1 <= k <= n_inner:
        raise DFRError(f"scoring.top_k must be between 1 and {n_inner} (the map's size"
                       + (f" without its border of {border}" if border else "") + f"), got {k}")
    return top_k_mean(a, k, border).numpy()


def _maps(model: torch.nn.Module, cache: FeatureCache, positions: np.ndarray, device: torch.device,
          batch: int) -> np.ndarray:
    import torch

    out = []
    for start in range(0, len(positions), batch):
        f = torch.from_numpy(cache.read(positions[start:start + batch])).to(device)
        f = f.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            a = model.anomaly_map(f).cpu().numpy()
        if not np.isfinite(a).all():
            ok = np.isfinite(a).reshape(len(a), -1).all(axis=1)
            bad = cache.ids[positions[start + int(np.nonzero(~ok)[0][0])]]
            raise DFRError(f"{cache.path}: stage maps gave non-finite anomaly maps (e.g. for {bad}): the model "
                           "diverged or the features overflow: retrain it with a lower learning rate (its head's lr: "
                           "a new model key), or "
                           + remake_hint(cache.path))
        out.append(a)
    if not out:
        return np.zeros((0, *cache.shape[2:]), np.float32)
    return np.concatenate(out).astype(np.float32)


def anomaly_maps(model_path: str | Path, train_features: str | Path, test_features: str | Path,
                 split_json: str | Path, out: str | Path, params: dict) -> None:
    """A(x) at the feature grid for every validation (held-out normal) and test image, into one HDF5."""
    from dfr import compute
    from dfr import heads
    from dfr.stages.cache import FeatureCache

    device = compute.resolve_device(params.get("device", "auto"), params.get("device_class", "cpu"))
    model = heads.load(model_path, device)
    split = read_json(split_json)
    parts = []
    with FeatureCache(train_features) as tr:
        pos = tr.positions(split["val"])
        parts.append(("val", tr, pos, _maps(model, tr, pos, device, params["batch_size"])))
        with FeatureCache(test_features) as te:
            pos_t = np.arange(len(te.ids))
            parts.append(("test", te, pos_t, _maps(model, te, pos_t, device, params["batch_size"])))
            meta = pd.DataFrame([
                {"image_id": c.ids[i], "split": name, "label": int(c.label[i]), "defect": c.defect[i],
                 "path": c.path_[i], "mask_path": c.mask_path[i], "height": c.orig_size[i][0],
                 "width": c.orig_size[i][1]}
                for name, c, p, _ in parts for i in p], columns=MAP_COLUMNS)
            write_maps(out, np.concatenate([p[3] for p in parts]), meta, params)
    log.info("wrote %s: %d val + %d test maps", out, len(parts[0][2]), len(parts[1][2]))


MAP_COLUMNS = ["image_id", "split", "label", "defect", "path", "mask_path", "height", "width"]


def write_maps(out: str | Path, A: np.ndarray, meta: pd.DataFrame, params: dict) -> None:
    """maps.h5: A(x) [N, h, w] float32 and one row of ``meta`` (MAP_COLUMNS) per map, written atomically."""
    if len(A) != len(meta):
        raise DFRError(f"{out}: {len(A)} maps but {len(meta)} rows of metadata")
    s = h5py.string_dtype()
    check_space(out, np.asarray(A).size * 4)  # gzip makes it smaller: an upper bound
    with atomic_path(out, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("A", data=np.asarray(A, np.float32), compression="gzip")
        for k in ("image_id", "split", "defect", "path", "mask_path"):
            f.create_dataset(k, data=np.array(meta[k].astype(str).tolist(), dtype=object), dtype=s)
        f.create_dataset("label", data=meta.label.to_numpy(np.int8))
        f.create_dataset("orig_size", data=meta[["height", "width"]].to_numpy(np.int32).reshape(-1, 2))
        f.attrs["params"] = json.dumps(params, sort_keys=True)
        f.attrs["versions"] = json.dumps(versions(), sort_keys=True)
        f.attrs["device"] = json.dumps(device_info(), sort_keys=True)
        f.attrs["format"] = FORMATS["maps"]


class Maps:
    """Read access to ``maps.h5``; with ``border``, A(x) without its margin (:func:`without_border`)."""

    def __init__(self, path: str | Path, border: int = 0):
        self.border = border
        try:
            with h5py.File(path, "r") as f:
                fmt = f.attrs.get("format")
                check_format(path, "maps", int(fmt) if fmt is not None else None)
                self.A = f["A"][()]
                dec = lambda k: [x.decode() if isinstance(x, bytes) else x for x in f[k][()]]  # noqa: E731
                self.meta = pd.DataFrame({
                    "image_id": dec("image_id"), "split": dec("split"), "label": f["label"][()].astype(int),
                    "defect": dec("defect"), "path": dec("path"), "mask_path": dec("mask_path"),
                    "height": f["orig_size"][:, 0], "width": f["orig_size"][:, 1],
                })
        except FileNotFoundError:
            raise DFRError(f"{path}: anomaly maps not found") from None
        except (OSError, KeyError, ValueError) as e:
            raise DFRError(f"{path}: not a readable maps file, truncated or corrupt ({e}); "
                           + remake_hint(path)) from None
        if not np.isfinite(self.A).all():
            raise DFRError(f"{path}: non-finite anomaly maps; " + remake_hint(path))
        self.A = without_border(self.A, border)


def maps_params(path: str | Path) -> dict:
    """The params recorded in a maps.h5 (for an ensemble's fused maps: its members' z-score statistics)."""
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            check_format(path, "maps", int(fmt) if fmt is not None else None)
            return json.loads(f.attrs["params"])
    except FileNotFoundError:
        raise DFRError(f"{path}: anomaly maps not found") from None
    except (OSError, KeyError, ValueError) as e:
        raise DFRError(f"{path}: not a readable maps file, truncated or corrupt ({e}); " + remake_hint(path)) from None


def image_scores(maps_path: str | Path, out: str | Path, top_k: int, border: int = 0) -> pd.DataFrame:
    m = Maps(maps_path)
    df = m.meta.copy()
    df["score"] = top_k_score(m.A, top_k, border)
    df = df[SCORE_COLUMNS]
    with atomic_path(out, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.8g")
    return df


def read_scores(path: str | Path, maps_meta: pd.DataFrame | None = None) -> pd.DataFrame:
    """scores.csv, checked: every column, every row complete, and (with the maps it was made from) one row per
    image of the maps, in their order. A cut or garbled file is named as such, with the command that remakes it."""
    try:
        df = pd.read_csv(path, keep_default_na=False, dtype=str)
    except FileNotFoundError:
        raise DFRError(f"{path}: scores not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DFRError(f"{path}: not a readable scores table, cut or garbled ({str(e).strip()[:200]}); "
                       + remake_hint(path)) from None
    missing = [c for c in SCORE_COLUMNS if c not in df.columns]
    if missing:
        raise DFRError(f"{path}: not a scores table (no column {', '.join(missing)}); " + remake_hint(path))
    required = ["image_id", "split", "label", "height", "width"]  # a cut row lacks its last cells
    empty = (df[required] == "").any(axis=1).to_numpy()
    numbers = {c: pd.to_numeric(df[c], errors="coerce") for c in ("label", "height", "width")}
    garbled = empty | np.any([v.isna().to_numpy() for v in numbers.values()], axis=0)
    if garbled.any():
        row = int(np.nonzero(garbled)[0][0])
        raise DFRError(f"{path}: row {row + 2} is incomplete or garbled ({df.image_id.iloc[row]!r}): the file was "
                       "cut or damaged after it was written; " + remake_hint(path))
    if maps_meta is not None and (len(df) != len(maps_meta) or list(df.image_id) != list(maps_meta.image_id)):
        raise DFRError(f"{path}: {len(df)} rows where its maps hold {len(maps_meta)} images (or in another order): "
                       "it was cut, or made from other maps; " + remake_hint(path))
    for c, v in numbers.items():
        df[c] = v.astype(int)
    df["score"] = pd.to_numeric(df.score, errors="coerce")  # a non-numeric score is NaN: refused later
    return df
