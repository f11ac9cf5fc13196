"""The benchmark runs and prints every figure; the streaming trainer's memory does not grow with the cache."""

import json

import pytest

from dfr.tools import bench


def _cache(tmp_path, n, shape=(256, 28, 28)):
    path = tmp_path / f"cache{n}.h5"
    bench.stage_hdf5(str(path), n, list(shape), 16)
    ids = [f"i{i}" for i in range(n)]
    split = tmp_path / f"split{n}.json"
    split.write_text(json.dumps({"train": ids, "val": []}))
    return path, split


@pytest.mark.extended
def test_streaming_trainer_memory_is_bounded(tmp_path):
    """10x more cached images (+170 MB on disk) must not raise the streaming trainer's peak RSS."""
    rss = {}
    for n in (50, 500):
        feats, split = _cache(tmp_path, n)
        out = bench.run_isolated(bench.stage_train, features=str(feats), split=str(split), latent=16, batch=16,
                                 threads=2, device="cpu", in_memory=False)
        rss[n] = out["peak_rss_mb"]
    size_gap_mb = (500 - 50) * 256 * 28 * 28 * 2 / 2**20
    print(f"peak RSS: {rss[50]:.0f} MB (50 images), {rss[500]:.0f} MB (500 images); cache +{size_gap_mb:.0f} MB")
    assert rss[500] - rss[50] < 100 < size_gap_mb, rss
    assert rss[500] < 3 * 1024


@pytest.mark.extended
@pytest.mark.slow
def test_bench_prints_every_figure(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert bench.main(["--images", "8", "--backbone", "resnet18", "--image-size", "64", "--batch-size", "4",
                       "--latent", "8", "--threads", "2", "--workers", "1", "--device", "cpu",
                       "--channels-last", "off", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    for needle in ("matmul", "backbone, truncated", "untruncated", "HDF5 cache write", "HDF5 cache read",
                   "CAE training epoch, cache in RAM", "streamed from HDF5", "scoring", "dfr predict end to end",
                   "peak RSS",
                   "backbone GFLOP/s / matmul GFLOP/s", "CAE training GFLOP/s / matmul GFLOP/s",
                   "epoch recomputing features / epoch from cache", "projected full MVTec AD"):
        assert needle in text, needle
    r = json.loads(out_json.read_text())
    assert r["matmul"]["gflops"] > 0 and r["backbone"]["truncated"]["gflop_per_image"] > 0
    assert r["backbone"]["truncated"]["gflop_per_image"] < r["backbone"]["full"]["gflop_per_image"]
    for stage in ("features", "hdf5", "train_ram", "train_stream", "scoring", "predict"):
        assert r[stage]["peak_rss_mb"] > 0
