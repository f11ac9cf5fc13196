"""Download -> verify -> extract/convert, offline: miniature archives served from 127.0.0.1."""

import functools
import hashlib
import io
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import BOTTLE, SHARED_DATA
from dfr.stages import data, datasets, synthetic
from dfr.io import DFRError
from test_workflow import TINY, snakemake

VISA_SPLIT = SHARED_DATA / "visa-split" / "1cls.csv"


class _Handler(SimpleHTTPRequestHandler):
    """Serves a folder; /truncated/<name> announces the full length but sends half and hangs up."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/truncated/"):
            body = (self.server.root / self.path.split("/", 2)[2]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    httpd.root = root
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mvtec_archive(server, tmp_path_factory):
    """A tar.xz with the real archive's inner structure: <category>/{train,test,ground_truth}, license.txt."""
    root, url = server
    src = tmp_path_factory.mktemp("mvtec_src")
    for name, cat in (("bottle", "disc"), ("grid", "grain")):
        synthetic.generate_category(src, cat, n_train=4, n_test_good=2, n_test_defect=1, seed=0)
        (src / cat).rename(src / name)
        (src / name / "synthetic.json").unlink()
    (src / "license.txt").write_text("CC BY-NC-SA 4.0")
    archive = root / "mvtec_anomaly_detection.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        for p in sorted(src.iterdir()):
            tar.add(p, arcname=p.name)
    return archive, url


def _cfg(tmp_path, spec):
    return {**TINY, "datasets": {"pub": {"root": str(tmp_path / "data" / "pub"), **spec}}}


def _prepare(tmp_path, spec, *targets):
    cats = spec["categories"]
    return snakemake(tmp_path, _cfg(tmp_path, spec),
                     *(targets or [f"results/prepared/pub/{c}/index.csv" for c in cats]))


def test_mvtec_download_verify_extract(tmp_path, mvtec_archive):
    archive, url = mvtec_archive
    spec = {"kind": "mvtec", "categories": ["bottle", "grid"], "urls": [f"{url}/missing.tar.xz",
                                                                         f"{url}/{archive.name}"],
            "sha256": _sha(archive)}
    r = _prepare(tmp_path, spec)
    assert r.returncode == 0, r.stderr[-3000:]
    idx = data.read_index(tmp_path / "results" / "prepared" / "pub" / "bottle" / "index.csv")
    assert (idx.split == "train").sum() == 4 and (idx.label == 1).sum() == 4
    m = np.asarray(Image.open(tmp_path / "data" / "pub" / "bottle" / "ground_truth" / "stain" / "000_mask.png"))
    assert set(np.unique(m)) == {0, 255}
    assert (tmp_path / "data" / "pub" / ".dfr-ready").is_file()
    assert (tmp_path / "data" / "downloads" / archive.name).is_file()
    # the dataset is there now: a second workflow run downloads nothing
    r = snakemake(tmp_path, _cfg(tmp_path, {**spec, "urls": [f"{url}/gone"]}), "-n", "--forceall",
                  "results/prepared/pub/bottle/index.csv")
    assert "prepare_dataset" not in r.stdout


def _assert_nothing_trusted(tmp_path):
    pub = tmp_path / "data" / "pub"
    assert not (pub / ".dfr-ready").exists()
    assert not (pub / "bottle").exists()
    assert not list((tmp_path / "data").glob("*.extracting"))
    assert not (tmp_path / "data" / "downloads" / "mvtec_anomaly_detection.tar.xz").exists()


def test_wrong_checksum_fails_clearly(tmp_path, mvtec_archive):
    archive, url = mvtec_archive
    r = _prepare(tmp_path, {"kind": "mvtec", "categories": ["bottle"], "urls": [f"{url}/{archive.name}"],
                            "sha256": "0" * 64})
    assert r.returncode != 0
    log = next((tmp_path / "results" / "logs" / "datasets").rglob("*.log")).read_text()
    assert f"sha256 {_sha(archive)} does not match the expected {'0' * 64}" in log
    assert "Place the archive at" in log
    _assert_nothing_trusted(tmp_path)
    assert not list((tmp_path / "data" / "downloads").glob("*.part"))


def test_truncated_download_fails_then_restarts_cleanly(tmp_path, mvtec_archive):
    archive, url = mvtec_archive
    spec = {"kind": "mvtec", "categories": ["bottle"], "urls": [f"{url}/truncated/{archive.name}"],
            "sha256": _sha(archive)}
    r = _prepare(tmp_path, spec)
    assert r.returncode != 0
    log = next((tmp_path / "results" / "logs" / "datasets").rglob("*.log")).read_text()
    assert "could not download mvtec_anomaly_detection.tar.xz" in log and "truncated download: got" in log
    _assert_nothing_trusted(tmp_path)
    r = _prepare(tmp_path, {**spec, "urls": [f"{url}/{archive.name}"]})
    assert r.returncode == 0, r.stderr[-3000:]


def test_archive_with_parent_member_is_refused(tmp_path, server):
    root, url = server
    evil = root / "evil.tar.xz"
    with tarfile.open(evil, "w:xz") as tar:
        info = tarfile.TarInfo("bottle/../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    r = _prepare(tmp_path, {"kind": "mvtec", "categories": ["bottle"], "urls": [f"{url}/{evil.name}"],
                            "sha256": _sha(evil)})
    assert r.returncode != 0
    log = next((tmp_path / "results" / "logs" / "datasets").rglob("*.log")).read_text()
    assert "unsafe member 'bottle/../../escaped.txt'" in log
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "data" / "pub" / ".dfr-ready").exists()


def test_local_archive_skips_the_network(tmp_path, mvtec_archive):
    archive, _ = mvtec_archive
    r = _prepare(tmp_path, {"kind": "mvtec", "categories": ["grid"], "archive": str(archive),
                            "urls": ["http://127.0.0.1:9/unreachable"], "sha256": _sha(archive)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "data" / "pub" / "grid" / "train" / "good").is_dir()


def _visa_tree(raw, split: pd.DataFrame, size=(12, 10)):
    """Stand-in images and id-valued masks at every path a VisA split names."""
    rng = np.random.default_rng(0)
    for p in split.image:
        (raw / p).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(raw / p, format="JPEG")
    for p in split["mask"][split["mask"] != ""]:
        (raw / p).parent.mkdir(parents=True, exist_ok=True)
        m = np.zeros(size[::-1], np.uint8)
        m[2:5, 3:7] = 3  # class ids, not 255
        m[7, 1] = 7
        Image.fromarray(m).save(raw / p)


def _mini_visa_split():
    rows = []
    for obj in ("candle", "pcb1"):
        for i in range(5):
            rows.append((obj, "train", "normal", f"{obj}/Data/Images/Normal/{i:03d}.JPG", ""))
        for i in range(5, 7):
            rows.append((obj, "test", "normal", f"{obj}/Data/Images/Normal/{i:03d}.JPG", ""))
        for i in range(3):
            rows.append((obj, "test", "anomaly", f"{obj}/Data/Images/Anomaly/{i:03d}.JPG",
                         f"{obj}/Data/Masks/Anomaly/{i:03d}.png"))
    return pd.DataFrame(rows, columns=["object", "split", "label", "image", "mask"])


def test_visa_download_convert(tmp_path, server):
    root, url = server
    raw = tmp_path / "visa_raw"
    split = _mini_visa_split()
    _visa_tree(raw, split)
    (raw / "split_csv").mkdir()
    split.to_csv(raw / "split_csv" / "1cls.csv", index=False)
    archive = root / "VisA_20220922.tar"
    with tarfile.open(archive, "w") as tar:
        for p in sorted(raw.iterdir()):
            tar.add(p, arcname=p.name)
    r = _prepare(tmp_path, {"kind": "visa", "categories": ["candle", "pcb1"], "urls": [f"{url}/{archive.name}"],
                            "sha256": _sha(archive)})
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "data" / "pub" / "candle"
    assert len(list((out / "train" / "good").glob("*.JPG"))) == 5
    assert len(list((out / "test" / "good").glob("*.JPG"))) == 2
    assert len(list((out / "test" / "bad").glob("*.JPG"))) == 3
    m = np.asarray(Image.open(out / "ground_truth" / "bad" / "001_mask.png"))
    assert set(np.unique(m)) == {0, 255} and (m == 255).sum() == 13
    idx = data.read_index(tmp_path / "results" / "prepared" / "pub" / "pcb1" / "index.csv")
    assert (idx.defect == "bad").sum() == 3 and (idx[idx.label == 1].mask_path != "").all()
    assert not (tmp_path / "data" / "pub.raw").exists()


@pytest.mark.skipif(not VISA_SPLIT.is_file(), reason=f"{VISA_SPLIT} not present")
def test_real_visa_split_converts_to_its_counts(tmp_path):
    split = pd.read_csv(VISA_SPLIT, dtype=str, keep_default_na=False)
    raw, out = tmp_path / "raw", tmp_path / "out"
    _visa_tree(raw, split, size=(8, 8))
    counts = datasets.convert_visa(raw, out, split_csv=VISA_SPLIT)
    assert len(counts) == 12
    want = split.assign(key=split["split"] + "/" + split.label.map({"normal": "good", "anomaly": "bad"}))
    for obj, g in want.groupby("object"):
        assert counts[obj] == {k: int((g.key == k).sum()) for k in ("train/good", "test/good", "test/bad")}
    datasets.check_on_disk(out, counts)
    datasets.check_visa_counts(counts, VISA_SPLIT)  # 8,659 / 962 / 1,200
    df = data.index_category(out, "candle")
    assert (df.split == "train").sum() == counts["candle"]["train/good"]


def test_visa_split_problems(tmp_path):
    split = _mini_visa_split()
    raw = tmp_path / "raw"
    _visa_tree(raw, split)
    (raw / split.image.iloc[-1]).unlink()
    split.to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DFRError, match=r"002.JPG: listed in s.csv but missing from the archive"):
        datasets.convert_visa(raw, tmp_path / "out", split_csv=tmp_path / "s.csv")
    with pytest.raises(DFRError, match="VisA split file not found"):
        datasets.convert_visa(raw, tmp_path / "out")
    with pytest.raises(DFRError, match=r"categories \['moon'\] not in the VisA split"):
        datasets.convert_visa(raw, tmp_path / "out", categories=["moon"], split_csv=tmp_path / "s.csv")


@pytest.mark.skipif(not (BOTTLE / "bottle").is_dir(), reason=f"{BOTTLE} not present")
def test_real_bottle_passes_validation():
    df = data.index_category(BOTTLE, "bottle")
    assert (df.split == "train").sum() == 209
    assert (df.split == "test").sum() == 83 and df.label.sum() == 63


# ---- MVTec AD 2: its layout, its held-out validation/ folder, its private sets, its archive ----

def _ad2_category(root, name, seed=0):
    """A synthetic category in MVTec AD 2's layout under root/name."""
    synthetic.generate_category(root, "disc", n_train=8, n_test_good=2, n_test_defect=1, seed=seed,
                                defects=("stain", "scratch"), layout="mvtec_ad2")
    (root / "disc").rename(root / name)
    (root / name / "synthetic.json").unlink()
    return root / name


def test_mvtec_ad2_layout_holds_out_its_validation_folder_and_indexes_private_images_unlabelled(tmp_path):
    croot = _ad2_category(tmp_path, "can")
    idx = data.index_category(tmp_path, "can")
    val = sorted(p.stem for p in (croot / "validation" / "good").iterdir())
    assert sorted(idx.image_id[idx.image_id.str.startswith("validation/")]) == [f"validation/good/{s}" for s in val]
    split = data.holdout_split(idx, 0.5, 3)  # val_fraction and seed do not apply: the folder decides
    assert split["val"] == [f"validation/good/{s}" for s in val] and len(split["train"]) == 8 - len(val)
    bad = idx[idx.label == 1]
    assert len(bad) == 2 and all(m.endswith("_mask.png") and "test_public/ground_truth/bad" in m for m in bad.mask_path)
    private = idx[idx.split == "private"]
    assert (private.label == -1).all() and len(private) == 2 * 4
    assert set(private.image_id.str.split("/").str[0]) == {"test_private", "test_private_mixed"}
    assert sorted(private.image_id)[0] == "test_private/000_regular"
    data.write_index(idx, tmp_path / "index.csv")
    back = data.read_index(tmp_path / "index.csv")
    assert back.label.tolist() == idx.label.tolist()


def test_mvtec_ad2_layout_errors_name_each_file(tmp_path):
    croot = _ad2_category(tmp_path, "rice")
    import shutil

    shutil.rmtree(croot / "validation")
    bad = sorted((croot / "test_public" / "bad").iterdir())
    bad[0].unlink()  # its mask stays: a mask without its image
    (croot / "test_public" / "ground_truth" / "bad" / f"{bad[1].stem}_mask.png").unlink()  # an image without
    with pytest.raises(DFRError) as e:
        data.index_category(tmp_path, "rice")
    msg = str(e.value)
    assert f"{croot / 'validation' / 'good'}: missing; MVTec AD 2 holds out its normal validation images" in msg
    assert f"{bad[0].stem}_mask.png: a mask without its image" in msg
    assert f"{bad[1]}: anomalous test image without a mask" in msg
    assert "3 problem(s)" in msg


@pytest.fixture(scope="module")
def ad2_archive(server, tmp_path_factory):
    """A tar.gz of two categories in MVTec AD 2's layout under one top folder, as the real archive holds them."""
    root, url = server
    src = tmp_path_factory.mktemp("ad2_src")
    for i, name in enumerate(("can", "rice")):
        _ad2_category(src / "mvtec_ad_2", name, seed=i)
    archive = root / "mvtec_ad_2.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "mvtec_ad_2", arcname="mvtec_ad_2")
    return archive, url


def test_mvtec_ad2_download_failure_names_the_licence_page_and_the_key(tmp_path, server):
    _, url = server
    r = _prepare(tmp_path, {"kind": "mvtec_ad2", "categories": ["can"], "urls": [f"{url}/gone.tar.gz"]})
    assert r.returncode != 0
    log = next((tmp_path / "results" / "logs" / "datasets").rglob("*.log")).read_text()
    assert "could not download mvtec_ad_2.tar.gz" in log and f"{url}/gone.tar.gz: HTTPError" in log
    assert datasets.MVTEC_AD2_PAGE in log and "set the dataset's 'archive' key" in log
    assert not (tmp_path / "data" / "pub" / ".dfr-ready").exists()


def test_mvtec_ad2_downloads_from_its_published_source_and_checks_the_published_checksum(
        tmp_path, ad2_archive, monkeypatch):
    """No urls or sha256 in the config: the published source's (here pointed at the local server) are used."""
    archive, url = ad2_archive
    published = {"file": "mvtec_ad_2.tar.gz", "sha256": _sha(archive), "urls": [f"{url}/{archive.name}"]}
    monkeypatch.setitem(datasets.SOURCES, "mvtec_ad2", published)
    root = tmp_path / "data" / "ad2"
    datasets.prepare(root, {"kind": "mvtec_ad2", "categories": ["rice"]})
    assert (root / "rice" / "validation" / "good").is_dir() and (root / ".dfr-ready").is_file()
    assert (tmp_path / "data" / "downloads" / "mvtec_ad_2.tar.gz").is_file()
    # another file behind the published link: refused by the published checksum, nothing trusted
    monkeypatch.setitem(datasets.SOURCES, "mvtec_ad2", {**published, "sha256": "0" * 64})
    other = tmp_path / "other"
    with pytest.raises(DFRError, match=f"sha256 {_sha(archive)} does not match the expected {'0' * 64}"):
        datasets.prepare(other / "ad2", {"kind": "mvtec_ad2", "categories": ["rice"]})
    assert not (other / "ad2").exists() and not list((other / "downloads").glob("*"))


def test_mvtec_ad2_from_a_mirror_is_verified_extracted_and_indexed(tmp_path, ad2_archive):
    archive, url = ad2_archive
    spec = {"kind": "mvtec_ad2", "categories": ["can", "rice"], "urls": [f"{url}/{archive.name}"],
            "sha256": _sha(archive)}
    r = _prepare(tmp_path, spec)
    assert r.returncode == 0, r.stderr[-3000:]
    pub = tmp_path / "data" / "pub"
    assert (pub / "can" / "validation" / "good").is_dir() and not (pub / "mvtec_ad_2").exists()
    idx = data.read_index(tmp_path / "results" / "prepared" / "pub" / "rice" / "index.csv")
    assert (idx.split == "private").sum() == 8 and (idx.label == 1).sum() == 2
    # the same archive given as a local file: no network, the same layout
    (tmp_path / "local").mkdir()
    r = _prepare(tmp_path / "local", {"kind": "mvtec_ad2", "categories": ["can"], "archive": str(archive)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "local" / "data" / "pub" / "can" / "test_public" / "ground_truth" / "bad").is_dir()


def test_a_dry_run_plans_every_mvtec_ad2_category_and_says_what_it_downloads(tmp_path):
    from conftest import planned_jobs
    from dfr.planning import config as dfr_config

    cats = dfr_config.MVTEC_AD2_CATEGORIES
    assert cats == ["can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts"]
    r = snakemake(tmp_path, _cfg(tmp_path, {"kind": "mvtec_ad2", "categories": cats}), "-n")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = planned_jobs(r.stdout)
    assert jobs["prepare_dataset"] == 1 and jobs["index"] == 8 and jobs["metrics"] == 8
    assert jobs["submission_part"] == 8 and jobs["submission"] == 1  # the default target: the leaderboard archive
    assert "MVTec AD 2 (8709 images, about 32.7 GB to download" in r.stdout + r.stderr
    with pytest.raises(DFRError, match=r"\['bolt'\] not in mvtec_ad2"):
        dfr_config.validate(_cfg(tmp_path, {"kind": "mvtec_ad2", "categories": ["can", "bolt"]}), "x.yaml")
