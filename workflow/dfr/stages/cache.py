"""The feature cache, ``features.h5``: f(x) of every image of a split, one float16 (or float32) chunk per image
with a checksum, and the index rows, params, versions and device that made it (written by the features stage,
read by every stage after it). Without torch: a job that only reads f(x) (PCA) does not import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pandas as pd

from dfr.io import FORMATS, DFRError, check_format, device_info, remake_hint, versions


def _attr(f: h5py.File, name: str):
    v = f.attrs.get(name)
    return int(v) if v is not None else None


def write_cache_meta(f: h5py.File, rows: pd.DataFrame, params: dict, **attrs) -> None:
    """Everything of a feature cache but the features: per-image ids, labels, paths and sizes (from index
    rows), the params, versions and format that made it."""
    s = h5py.string_dtype()
    for k in ("image_id", "defect", "path", "mask_path"):
        f.create_dataset(k, data=rows[k].astype(str).to_numpy(dtype=object), dtype=s)
    f.create_dataset("label", data=rows.label.to_numpy(dtype=np.int8))
    f.create_dataset("orig_size", data=rows[["height", "width"]].to_numpy(dtype=np.int32).reshape(-1, 2))
    f.attrs["params"] = json.dumps(params, sort_keys=True)
    f.attrs["versions"] = json.dumps(versions(), sort_keys=True)
    f.attrs["device"] = json.dumps(device_info(), sort_keys=True)
    f.attrs["format"] = FORMATS["features"]
    for k, v in attrs.items():
        f.attrs[k] = v


class FeatureCache:
    """Read access to a ``features.h5`` file: ids, labels and f(x) rows as float32."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.file = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise DFRError(f"{path}: feature cache not found") from None
        except OSError as e:
            raise DFRError(f"{path}: not a readable HDF5 feature cache, truncated or corrupt ({e}); "
                           + remake_hint(path)) from None
        try:
            check_format(path, "features", _attr(self.file, "format"))
            self.features = self.file["features"]
            self._buf = np.empty((1, *self.features.shape[1:]), self.features.dtype)  # one chunk: one image
            dec = lambda k: [s.decode() if isinstance(s, bytes) else s for s in self.file[k][()]]  # noqa: E731
            self.ids = dec("image_id")
            self.label = self.file["label"][()].astype(int)
            self.defect, self.path_, self.mask_path = dec("defect"), dec("path"), dec("mask_path")
            self.orig_size = self.file["orig_size"][()]
            self.params = json.loads(self.file.attrs.get("params", "{}"))
        except DFRError:
            self.file.close()
            raise
        except (KeyError, OSError, ValueError) as e:
            self.file.close()
            raise DFRError(f"{path}: not a complete DFR feature cache ({e}); " + remake_hint(path)) from None
        self.pos = {k: i for i, k in enumerate(self.ids)}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape)

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        try:
            return np.array([self.pos[i] for i in ids], dtype=np.int64)
        except KeyError as e:
            raise DFRError(f"{self.path}: image {e.args[0]!r} is not in the feature cache "
                           "(the index changed since the features were extracted?)") from None

    def read(self, positions: Sequence[int]) -> np.ndarray:
        """Rows at ``positions`` (any order) as float32.

        One chunk (one image) is read at a time into a reused buffer: memory stays at one batch however
        large the cache, and no HDF5 fancy-index selection is built.
        """
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), *self.shape[1:]), np.float32)
        for k, p in enumerate(positions):
            try:
                self.features.read_direct(self._buf, np.s_[int(p)], np.s_[0])
            except (OSError, ValueError) as e:
                raise DFRError(f"{self.path}: the features of {self.ids[p]} cannot be read (corrupt or truncated "
                               f"file: {e}); " + remake_hint(self.path)) from None
            out[k] = self._buf[0]
            if not np.isfinite(out[k]).all():
                raise DFRError(f"{self.path}: non-finite features (NaN/inf) for {self.ids[p]}; "
                               + remake_hint(self.path))
        return out

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
