"""Public datasets (MVTec AD, VisA): download with resume, sha256 verification, safe extraction."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .io import DFRError, write_json

log = logging.getLogger(__name__)

SOURCES = {
    "mvtec": {
        "file": "mvtec_anomaly_detection.tar.xz",
        "sha256": "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        "urls": ["https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
                 "420938113-1629952094/mvtec_anomaly_detection.tar.xz"],
    },
    "visa": {
        "file": "VisA_20220922.tar",
        "sha256": "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        "urls": ["https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar"],
    },
}


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download(urls: list[str], dest: Path, expected_sha256: str) -> Path:
    """Download to ``dest`` (resuming a ``.part`` file), verify sha256, and only then rename into place."""
    if dest.is_file() and sha256(dest) == expected_sha256:
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        try:
            start = part.stat().st_size if part.exists() else 0
            req = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
            with urllib.request.urlopen(req, timeout=60) as r:
                if start and r.status != 206:  # server ignored the range: restart cleanly
                    start = 0
                total = int(r.headers.get("Content-Length", 0)) + start
                with open(part, "ab" if start else "wb") as f, tqdm(
                        total=total or None, initial=start, unit="B", unit_scale=True, desc=dest.name,
                        mininterval=5) as bar:
                    for block in iter(lambda: r.read(1 << 20), b""):
                        f.write(block)
                        bar.update(len(block))
        except Exception as e:  # noqa: BLE001 - network errors come in many types
            errors.append(f"{url}: {type(e).__name__}: {e}")
            continue
        got = sha256(part)
        if got != expected_sha256:
            part.unlink()
            errors.append(f"{url}: sha256 {got} does not match the expected {expected_sha256}")
            continue
        part.rename(dest)
        return dest
    raise DFRError(
        f"could not download {dest.name}:\n  " + "\n  ".join(errors) +
        f"\nPlace the archive at {dest} (or set the dataset's 'archive' key to an existing copy) and rerun."
    )


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into ``dest``, refusing absolute paths, '..' and links that leave ``dest``."""
    tmp = dest.with_name(dest.name + ".extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                name = Path(m.name)
                if name.is_absolute() or ".." in name.parts:
                    raise DFRError(f"{archive}: unsafe member {m.name!r} (absolute or '..' path); refusing")
                if m.issym() or m.islnk():
                    target = (tmp / name.parent / m.linkname).resolve()
                    if not str(target).startswith(str(tmp.resolve())):
                        raise DFRError(f"{archive}: link {m.name!r} points outside the archive; refusing")
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DFRError(f"{archive}: broken or truncated archive ({e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        for child in tmp.iterdir():
            target = dest / child.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            child.rename(target)
        tmp.rmdir()
    else:
        tmp.rename(dest)


def prepare(root: str | Path, spec: dict) -> None:
    """Make ``root`` hold the dataset in MVTec layout, downloading only what is missing."""
    root = Path(root)
    kind = spec["kind"]
    if kind not in SOURCES:
        raise DFRError(f"dataset kind {kind!r} has nothing to download")
    missing = [c for c in spec["categories"] if not (root / c / "train").is_dir()]
    if missing:
        src = SOURCES[kind]
        archive = Path(spec["archive"]) if spec.get("archive") else root.parent / "downloads" / src["file"]
        if spec.get("archive"):
            if not archive.is_file():
                raise DFRError(f"{archive}: archive not found (the dataset's 'archive' key points at it)")
            got = sha256(archive)
            if got != src["sha256"]:
                raise DFRError(f"{archive}: sha256 {got} does not match the expected {src['sha256']}")
        else:
            download(spec.get("urls") or src["urls"], archive, src["sha256"])
        if kind == "mvtec":
            safe_extract(archive, root)
        else:
            raise DFRError("VisA conversion is not implemented yet: convert VisA to MVTec layout by hand and "
                           f"point the dataset's root at it ({root})")
    write_json(root / ".dfr-ready", {"kind": kind, "categories": spec["categories"]})
