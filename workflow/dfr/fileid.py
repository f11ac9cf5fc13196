"""A file's identity by content: the sha256 that the keys name a local weights file by (:mod:`dfr.planning.keys`)
and that a job checks its weights file against before it loads it (:mod:`dfr.stages.backbones`). A leaf: it
imports nothing of the package but the error type."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dfr.io import DFRError


def _cache_file() -> Path:
    root = os.environ.get("DFR_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                           os.path.expanduser("~/.cache"), "dfr")
    return Path(root) / "file-sha256.json"


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's content, remembered by (real path, size, mtime) in a small JSON cache, so that
    a 100 MB weights file is hashed once, not at every Snakefile parse."""
    p = Path(path)
    try:
        real, st = str(p.resolve(strict=True)), p.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise DFRError(f"{path}: weights file not found (features.weights points at it)") from None
    stamp = [st.st_size, st.st_mtime_ns]
    key = (real, *stamp)
    if key not in _SHA256:
        _SHA256[key] = _file_sha256(real, stamp)
    return _SHA256[key]


_SHA256: dict[tuple, str] = {}  # (real path, size, mtime) -> sha256, in this process


def _file_sha256(real: str, stamp: list) -> str:
    cache_file = _cache_file()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(real)
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    cache[real] = {"stamp": stamp, "sha256": h.hexdigest()}
    try:  # best effort: a read-only home only costs the hash again next time
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
        os.replace(tmp, cache_file)
    except OSError:
        pass
    return h.hexdigest()
