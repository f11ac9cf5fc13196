"""Public datasets (MVTec AD, VisA, MVTec AD 2): download with resume, sha256 verification, safe extraction."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from dfr.io import DFRError, write_json

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
    # MVTec AD 2's full archive (32,739,596,982 bytes): the link and checksum anomalib's MVTecAD2 datamodule
    # downloads (open-edge-platform/anomalib), then an earlier share of the same file as a fallback
    "mvtec_ad2": {
        "file": "mvtec_ad_2.tar.gz",
        "sha256": "c0ded99ef32bfc8e352d52beb44515e5b292b8598cb963aadfa91ca0763505e4",
        "urls": ["https://www.mydrive.ch/shares/121573/7f68fe2c4f7c2ceaa08f463aaeb2f414/download/"
                 "466712769-1743422799/mvtec_ad_2.tar.gz",
                 "https://www.mydrive.ch/shares/150997/701c90d3aea6588f404936e32a674602/download/"
                 "466712769-1743429042/mvtec_ad_2.tar.gz"],
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
                    got_bytes = bar.n
            if total and got_bytes < total:  # the connection closed early: keep .part to resume
                raise ConnectionError(f"truncated download: got {got_bytes} of {total} bytes")
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
        _move_contents(tmp, dest)
    else:
        tmp.rename(dest)


def _move_contents(src: Path, dest: Path) -> None:
    """Every entry of ``src`` renamed into ``dest`` (replacing one of the same name), then ``src`` removed."""
    for child in src.iterdir():
        target = dest / child.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        child.rename(target)
    src.rmdir()


VISA_EXPECTED = {("train", "normal"): 8659, ("test", "normal"): 962, ("test", "anomaly"): 1200}


def _place(src: Path, dst: Path) -> None:
    """Hard-link when possible (same filesystem), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def convert_visa(raw: Path, out: Path, categories: list[str] | None = None,
                 split_csv: Path | None = None) -> dict[str, dict[str, int]]:
    """Convert an extracted VisA tree into MVTec layout with the official one-class split.

    ``split_csv/1cls.csv`` (columns object, split, label, image, mask; paths relative to ``raw``) decides
    train/test; label normal -> ``good``, anomaly -> ``bad``. Masks hold class ids: any non-zero pixel is
    anomalous; they are written binary (0/255) as ``ground_truth/bad/<image stem>_mask.png``.
    Returns per-category counts and checks them against the split file.
    """
    import numpy as np
    import pandas as pd
    from PIL import Image

    from dfr.stages.data import load_mask

    split_csv = split_csv or raw / "split_csv" / "1cls.csv"
    try:
        df = pd.read_csv(split_csv, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DFRError(f"{split_csv}: VisA split file not found (is {raw} an extracted VisA archive?)") from None
    need = {"object", "split", "label", "image", "mask"}
    if not need <= set(df.columns):
        raise DFRError(f"{split_csv}: expected columns {sorted(need)}, found {list(df.columns)}")
    bad_labels = set(df.label) - {"normal", "anomaly"}
    bad_splits = set(df["split"]) - {"train", "test"}
    if bad_labels or bad_splits:
        raise DFRError(f"{split_csv}: unexpected labels {sorted(bad_labels)} or splits {sorted(bad_splits)}")
    if categories:
        unknown = sorted(set(categories) - set(df.object))
        if unknown:
            raise DFRError(f"{split_csv}: categories {unknown} not in the VisA split")
        df = df[df.object.isin(categories)]
    counts: dict[str, dict[str, int]] = {}
    for obj, rows in df.groupby("object", sort=True):
        tmp = out / f".{obj}.converting"
        shutil.rmtree(tmp, ignore_errors=True)
        c = {"train/good": 0, "test/good": 0, "test/bad": 0}
        for r in rows.itertuples(index=False):
            src = raw / r.image
            if not src.is_file():
                raise DFRError(f"{src}: listed in {split_csv.name} but missing from the archive")
            sub = "good" if r.label == "normal" else "bad"
            if r.split == "train" and sub == "bad":
                raise DFRError(f"{split_csv}: anomalous image {r.image} in the train split")
            dst = tmp / r.split / sub / src.name
            if dst.exists():
                raise DFRError(f"{split_csv}: two images map to {dst.relative_to(tmp)}")
            _place(src, dst)
            c[f"{r.split}/{sub}"] += 1
            if sub == "bad":
                mpath = raw / r.mask if r.mask else None
                if mpath is None or not mpath.is_file():
                    raise DFRError(f"{src}: anomalous image without a mask ({mpath or 'no mask in the split'})")
                m = load_mask(mpath)
                mdst = tmp / "ground_truth" / "bad" / f"{src.stem}_mask.png"
                mdst.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(((m > 0) * 255).astype(np.uint8), "L").save(mdst)
        final = out / obj
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        counts[obj] = c
        log.info("VisA %s: %s", obj, c)
    return counts


def check_on_disk(root: Path, counts: dict[str, dict[str, int]]) -> None:
    """The converted tree holds exactly the images the split file lists, and a mask for every anomaly."""
    from dfr.stages.data import _image_files

    for obj, c in counts.items():
        for key, n in c.items():
            found = len(_image_files(root / obj / key)) if (root / obj / key).is_dir() else 0
            if found != n:
                raise DFRError(f"{root / obj / key}: {found} images after conversion, the split lists {n}")
        masks = root / obj / "ground_truth" / "bad"
        n_masks = len(list(masks.glob("*_mask.png"))) if masks.is_dir() else 0
        if n_masks != c["test/bad"]:
            raise DFRError(f"{masks}: {n_masks} masks for {c['test/bad']} anomalous images")


def check_visa_counts(counts: dict[str, dict[str, int]], split_csv: Path) -> None:
    """All 12 categories converted: totals must be the published 8,659 / 962 / 1,200."""
    total = {k: sum(c[k] for c in counts.values()) for k in ("train/good", "test/good", "test/bad")}
    want = {"train/good": VISA_EXPECTED[("train", "normal")], "test/good": VISA_EXPECTED[("test", "normal")],
            "test/bad": VISA_EXPECTED[("test", "anomaly")]}
    if total != want:
        raise DFRError(f"{split_csv}: converted counts {total} differ from the published VisA split {want}")


MVTEC_AD2_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad-2"


def local_archive(spec: dict, expected: str | None) -> Path:
    """The dataset's ``archive`` file, verified against ``expected`` (its sha256) when one is known."""
    archive = Path(spec["archive"])
    if not archive.is_file():
        raise DFRError(f"{archive}: archive not found (the dataset's 'archive' key points at it)")
    if expected:
        got = sha256(archive)
        if got != expected:
            raise DFRError(f"{archive}: sha256 {got} does not match the expected {expected}; the file is "
                           "corrupt or not that archive")
    return archive


def _lift_top_folder(root: Path, categories: list[str]) -> None:
    """An archive that holds one top folder (``mvtec_ad_2/<category>/``): its categories moved up into root."""
    if any((root / c).is_dir() for c in categories):
        return
    tops = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    for top in tops:
        if any((top / c).is_dir() for c in categories):
            _move_contents(top, root)
            return


def prepare_mvtec_ad2(root: Path, spec: dict) -> None:
    """MVTec AD 2 (CC BY-NC-SA 4.0), downloaded when categories are missing as MVTec AD is: resumable,
    sha256-verified against the published archive, extracted safely, every category's layout indexed
    (dfr.data.index_mvtec_ad2) before the folder is trusted. With ``archive`` (the full archive, or a
    per-category one from MVTec's page), that file is used instead and checked by its layout, and by
    ``sha256`` when the config gives one."""
    from dfr.stages.data import index_mvtec_ad2

    missing = [c for c in spec["categories"] if not (root / c / "train").is_dir()]
    if missing:
        src = SOURCES["mvtec_ad2"]
        if spec.get("archive"):  # whole or per category: checked by its layout, and its sha256 when given
            archive = local_archive(spec, spec.get("sha256"))
        else:
            dest = root.parent / "downloads" / src["file"]
            log.info("%s: categories %s missing; fetching %s (about 33 GB)", root, missing, src["file"])
            try:
                archive = download(spec.get("urls") or src["urls"], dest, spec.get("sha256") or src["sha256"])
            except DFRError as e:
                raise DFRError(f"{e}\nMVTec AD 2 is also offered on {MVTEC_AD2_PAGE} once its licence is "
                               f"accepted, whole or per category: extract it into {root}/ (so that "
                               f"{root}/{missing[0]}/train exists), or set the dataset's 'archive' key to the "
                               "downloaded file, and rerun") from None
        safe_extract(archive, root)
        _lift_top_folder(root, spec["categories"])
        still = [c for c in spec["categories"] if not (root / c / "train").is_dir()]
        if still:
            raise DFRError(f"{archive}: categories {still} are not in the archive (extracted into {root})")
    for c in spec["categories"]:
        index_mvtec_ad2(root / c)  # the layout, every image and mask readable: one error listing every problem


def prepare(root: str | Path, spec: dict) -> None:
    """Make ``root`` hold the dataset in MVTec layout, downloading only what is missing.

    Nothing a rerun would trust is left half-done: archives are verified before use, extraction and
    conversion happen in temporary folders renamed into place, and ``.dfr-ready`` is written last.
    """
    root = Path(root)
    kind = spec["kind"]
    if kind == "mvtec_ad2":
        prepare_mvtec_ad2(root, spec)
        write_json(root / ".dfr-ready", {"kind": kind, "categories": spec["categories"]})
        return
    if kind not in SOURCES:
        raise DFRError(f"dataset kind {kind!r} has nothing to download")
    missing = [c for c in spec["categories"] if not (root / c / "train").is_dir()]
    if missing:
        src = SOURCES[kind]
        expected = spec.get("sha256") or src["sha256"]
        if spec.get("archive"):
            archive = local_archive(spec, expected)
        else:
            archive = root.parent / "downloads" / src["file"]
            log.info("%s: categories %s missing; fetching %s", root, missing, src["file"])
            download(spec.get("urls") or src["urls"], archive, expected)
        if kind == "mvtec":
            safe_extract(archive, root)
        else:
            raw = root.with_name(root.name + ".raw")
            safe_extract(archive, raw)
            base = raw / "VisA_20220922" if (raw / "VisA_20220922").is_dir() else raw
            root.mkdir(parents=True, exist_ok=True)
            split_csv = base / "split_csv" / "1cls.csv"
            counts = convert_visa(base, root, split_csv=split_csv)
            check_on_disk(root, counts)
            if expected == SOURCES["visa"]["sha256"]:  # the published archive: its published counts
                check_visa_counts(counts, split_csv)
            shutil.rmtree(raw, ignore_errors=True)
        still = [c for c in spec["categories"] if not (root / c / "train").is_dir()]
        if still:
            raise DFRError(f"{root}: categories {still} are not in the archive {archive}")
    write_json(root / ".dfr-ready", {"kind": kind, "categories": spec["categories"]})
