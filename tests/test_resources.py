"""Declared resources: derived from what a job processes, before and after its category is indexed."""

import copy

import pandas as pd
import pytest

from dfr.planning import layout, plan, workload
from dfr.planning import config, keys, resources
from dfr.stages import data, synthetic
from dfr.tools import rehearsal
from dfr import shapes
from dfr.heads import cae as cae_head
from dfr.heads.cae import HEAD as CAE

RULES = ["synthetic", "index", "features", "split", "pca", "train", "maps", "scores", "metrics", "plots"]


def _cfg(tmp_path, **synth):
    return config.validate({"results": str(tmp_path / "results"), "datasets": {
        "m": {"kind": "synthetic", "categories": ["screw", "bottle"],
              "synthetic": {"shape": "mvtec_ad", **synth}}}})


def test_workload_before_and_after_indexing_agree(tmp_path):
    cfg = _cfg(tmp_path, scale=0.05, size_scale=0.25)
    before = workload.workload(cfg, "m", "screw")
    root = layout.dataset_root(cfg, "m")
    synthetic.generate_category(root, "screw", shape="mvtec_ad", scale=0.05, size_scale=0.25)
    idx = plan.paths(cfg, "m", "screw")["index"]
    data.write_index(data.index_category(root, "screw"), idx)
    after = workload.workload(cfg, "m", "screw")
    assert before == after and after.n_test == 2 + 6 and after.max_image_pixels == 256 * 256


def test_every_rule_declares_memory_and_runtime_that_grow_with_the_data(tmp_path):
    small, big = _cfg(tmp_path, scale=0.1, size_scale=0.25), _cfg(tmp_path, scale=1.0)
    for rule in RULES:
        a = resources.estimate(small, rule, "m", "screw", "test")
        b = resources.estimate(big, rule, "m", "screw", "test")
        assert a["mem_mb"] >= small["resources"]["mem_mb_min"] and a["runtime"] >= 1
        assert b["mem_mb"] >= a["mem_mb"] and b["runtime"] >= a["runtime"], rule
    low = copy.deepcopy(big)
    low["resources"]["mem_mb_min"] = 500
    m = resources.estimate(low, "metrics", "m", "screw")["mem_mb"]
    s = shapes.shaped_spec("screw", "mvtec_ad")
    n_test = sum(shapes.shaped_counts("screw", "mvtec_ad")[2]) + shapes.shaped_counts("screw", "mvtec_ad")[1]
    assert m * 2**20 >= 8 * n_test * s.width * s.height  # 8 bytes per evaluated pixel at least
    low["metrics"]["eval_size"] = 256
    assert resources.estimate(low, "metrics", "m", "screw")["mem_mb"] < m


def test_real_benchmark_is_sized_from_its_known_shape(tmp_path):
    cfg = config.load("config/config.yaml")
    cfg["results"] = str(tmp_path)  # no index there: sized from dfr.shapes
    screw = workload.workload(cfg, "mvtec_ad", "screw")
    assert (screw.n_train, screw.n_test, screw.max_image_pixels) == (320, 160, 1024 * 1024)
    pcb1 = resources.estimate(cfg, "metrics", "visa", "pcb1")
    assert pcb1["mem_mb"] > resources.estimate(cfg, "metrics", "mvtec_ad", "toothbrush")["mem_mb"]


def test_report_flags_jobs_above_their_declaration():
    jobs = pd.DataFrame([
        {"rule": "metrics", "dataset": "d", "category": "a", "split": None, "wall_s": 3.0, "peak_mb": 900.0,
         "declared_mb": 1000},
        {"rule": "metrics", "dataset": "d", "category": "b", "split": None, "wall_s": 5.0, "peak_mb": 1200.0,
         "declared_mb": 1000},
        {"rule": "train", "dataset": "d", "category": "a", "split": None, "wall_s": 9.0, "peak_mb": 700.0,
         "declared_mb": 2000},
    ])
    s = rehearsal.stage_summary(jobs).set_index("stage")
    assert s.loc["metrics", "total_wall_s"] == 8.0 and s.loc["metrics", "largest_peak_mb"] == 1200.0
    assert s.loc["metrics", "min_headroom"] == pytest.approx(1000 / 1200)
    assert list(rehearsal.over_declared(jobs).category) == ["b"]


def test_rehearsal_collects_every_ensemble_members_jobs_once(tmp_path):
    """An ensemble's records: each member's model jobs, declared from the member's own config (a Gaussian's
    fit from its covariances, not the CAE's), jobs that members share counted once, and the fusion."""
    cfg = _cfg(tmp_path, scale=0.05, size_scale=0.25)
    cfg["ensemble"]["members"] = [{}, {"cae.seed": 1}, {"model": "gaussian"}]
    ms = plan.members(cfg)

    def record(c, rule, split=""):
        tsv = tmp_path / layout.benchmark_path(plan.log_paths(c, "m", "screw", split)[rule])
        tsv.parent.mkdir(parents=True, exist_ok=True)
        tsv.write_text("s\th:m:s\tmax_rss\n1.5\t0:00:01\t321.0\n")

    for m in ms:
        for s in ("train", "test"):
            record(m, "features", s)
        for rule in ("split", "pca", "train", "maps"):
            record(m, rule)
    for rule in ("index", "ensemble", "scores", "metrics"):
        record(cfg, rule)
    jobs = rehearsal.collect(cfg, tmp_path)
    n = jobs.groupby("rule").size().to_dict()
    # one cache (2 splits), one split, one PCA; three models and their maps; one fusion
    assert n == {"features": 2, "split": 1, "pca": 1, "train": 3, "maps": 3, "index": 1, "ensemble": 1,
                 "scores": 1, "metrics": 1}
    train = jobs[jobs.rule == "train"].declared_mb.tolist()
    assert train[:2] == [resources.estimate(ms[0], "train", "m", "screw")["mem_mb"]] * 2
    assert train[2] == resources.estimate(ms[2], "train", "m", "screw")["mem_mb"] != train[0]
    assert list(rehearsal.stage_summary(jobs).stage) == ["index", "features", "split", "pca", "train", "maps",
                                                          "ensemble", "scores", "metrics"]


@pytest.mark.extended
@pytest.mark.slow
def test_two_visible_gpus_never_run_more_than_two_gpu_jobs_at_once(tiny_copy, monkeypatch):
    """Run locally, each GPU stage's job holds one of the GPUs visible (faked: CUDA_VISIBLE_DEVICES=0,1; the
    jobs run on the CPU as the config says): with 4 cores and 1 thread a job, four features jobs could start
    together; two do."""
    import re

    from conftest import TINY, snakemake

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    cfg = {**TINY, "resources": {"threads": 1}}  # threads are runtime-only: the same artifacts
    r = snakemake(tiny_copy, cfg, "--forcerun", "features", "--cores", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    running, most = {}, 0
    for m in re.finditer(r"^(?:local)?rule (\w+):\n(?:\s+\w+:.*\n)*?\s+jobid: (\d+)|^Finished jobid: (\d+)", out, re.M):
        if m.group(1):
            running[m.group(2)] = m.group(1)
        else:
            running.pop(m.group(3), None)
        most = max(most, sum(rule in ("features", "train", "maps") for rule in running.values()))
    assert out.count("rule features:") == 4 and most == 2, out[-3000:]


def test_runtime_is_the_whole_minute_with_the_most_room_both_ways():
    """One stated safety factor (√3, the middle of [1x, 3x] on a log scale) over start-up plus the estimated
    work e, in the whole minute nearest it on that scale, at least one: that minute leaves the job the most
    room to run longer or shorter than estimated and stay within "no less than its time, at most 3x it"
    (at least √1.5 either way, the worst case being between one and two minutes). The tiny CI config's jobs
    (0.4-20 s measured) each declare one minute; a job of an hour's estimated work declares 104."""
    import math

    from conftest import TINY

    cfg = config.validate(TINY)
    assert resources.limit_minutes(0) == 1 and resources.limit_minutes(3600) == 104  # √3 x 3610 s = 104.2 min
    assert resources.limit_minutes(48 - resources.START_S) == 1 < resources.limit_minutes(50 - resources.START_S)

    def room(minutes: int, e: float) -> float:
        return min(60 * minutes / e, 3 * e / (60 * minutes))

    for e in range(1, 4000):
        minutes = resources.limit_minutes(e - resources.START_S)
        best = max(range(1, 200), key=lambda k: room(k, e))
        assert room(minutes, e) >= room(best, e) - 1e-12, (e, minutes, best)  # no whole minute leaves more
        assert 60 * minutes >= math.sqrt(1.5) * e and (minutes == 1 or room(minutes, e) >= math.sqrt(1.5)), e
    assert cfg["resources"]["start_s"] == resources.START_S == 10
    slow = config.validate({**TINY, "resources": {"start_s": 60}})  # a cluster's slower start-up: 2 minutes
    assert resources.estimate(slow, "split", "synth", "disc")["runtime"] == 2
    for rule in ("index", "features", "pca", "train", "maps", "scores", "metrics", "plots", "bundle", "split"):
        assert resources.estimate(cfg, rule, "synth", "disc", "train")["runtime"] == 1, rule


def test_the_rehearsal_names_jobs_longer_than_declared_and_declarations_over_three_times_their_time():
    jobs = pd.DataFrame([
        {"rule": "train", "dataset": "d", "category": "a", "split": None, "wall_s": 35.0, "declared_min": 2},  # loose
        {"rule": "train", "dataset": "d", "category": "b", "split": None, "wall_s": 41.0, "declared_min": 2},  # 3x: fine
        {"rule": "index", "dataset": "d", "category": "a", "split": None, "wall_s": 2.0, "declared_min": 1},  # 1 min floor
        {"rule": "metrics", "dataset": "d", "category": "a", "split": None, "wall_s": 61.0, "declared_min": 1},  # over
        {"rule": "features", "dataset": "d", "category": "a", "split": "test", "wall_s": 5.0, "declared_min": None},
    ])
    over, loose = rehearsal.runtime_check(jobs)
    assert list(over.rule) == ["metrics"] and list(loose.category) == ["a"] and list(loose.rule) == ["train"]
    lines = rehearsal.runtime_lines(jobs)
    assert lines[0].startswith("runtime: 2 of 4 jobs declare at most max(1 min, 3x their wall time)")
    assert "longer than declared: metrics d/a : 61 s measured, 1 min declared" in lines[1]
    assert "declared loosely: train d/a : 35 s measured, 2 min declared" in lines[2]


def test_a_training_job_is_sized_with_the_latent_dim_its_pca_chose_once_pca_has_run(tmp_path):
    """Snakemake sizes a job when it is ready to run: by then PCA's pca.json exists and its d replaces the C/4
    guess (for ResNet50, 384 against PCA's ~100: twice the work)."""
    from dfr.io import write_json

    cfg = config.validate({"results": str(tmp_path / "results"), "features": {"backbone": "resnet50"},
                           "datasets": {"m": {"kind": "synthetic", "categories": ["screw"],
                                              "synthetic": {"shape": "mvtec_ad"}}}})
    guess = resources.work_seconds(cfg, "train", "m", "screw")
    assert CAE.latent(cfg, 1536, "m", "screw") == 384
    write_json(plan.paths(cfg, "m", "screw")["pca"], {"latent_dim": 100})
    assert CAE.latent(cfg, 1536, "m", "screw") == 100
    chosen = resources.work_seconds(cfg, "train", "m", "screw")
    c, hw = resources.geometry(cfg)
    step = CAE.step_s(cfg, c, 100, hw)
    wl = workload.workload(cfg, "m", "screw")
    held = workload.held_out(cfg, wl)
    assert chosen == pytest.approx(cae_head.CAE_JOB_FACTOR * 50 * ((wl.n_train - held) * step + held * step / 3))
    assert 1.5 < guess / chosen < 2.5
    cfg["cae"]["latent_dim"] = 64  # a configured d is taken as it is
    assert CAE.latent(cfg, 1536, "m", "screw") == 64


def test_mvtec_ad2_holds_out_its_validation_images_before_and_after_indexing(tmp_path):
    cfg = config.validate({"results": str(tmp_path / "results"), "datasets": {"a": {
        "kind": "synthetic", "categories": ["vial"],
        "synthetic": {"shape": "mvtec_ad2", "layout": "mvtec_ad2", "scale": 0.05, "size_scale": 0.05}}}})
    before = workload.workload(cfg, "a", "vial")
    assert workload.held_out(cfg, before) == shapes.shaped_validation("vial", "mvtec_ad2", 0.05) == 2
    root = layout.dataset_root(cfg, "a")
    synthetic.generate_category(root, "vial", shape="mvtec_ad2", scale=0.05, size_scale=0.05, layout="mvtec_ad2")
    data.write_index(data.index_category(root, "vial"), plan.paths(cfg, "a", "vial")["index"])
    after = workload.workload(cfg, "a", "vial")
    assert after == before and after.n_private == 2 * 14
    assert workload.n_fit_images(cfg, "a", "vial") == after.n_train - 2


def test_a_folder_dataset_is_counted_once_per_state_of_its_folders(tmp_path):
    import shutil
    import time

    root = tmp_path / "data"
    synthetic.generate_category(root, "disc", n_train=6, n_test_good=2, n_test_defect=1, defects=("scratch",))
    folder = root / "disc"
    first = workload.from_folder(folder)
    assert (first.n_train, first.n_test) == (6, 3)
    assert workload.from_folder(folder) is first  # the same state: counted once
    time.sleep(0.05)  # past the file system's timestamp granularity
    img = sorted((folder / "test" / "scratch").glob("*.png"))[0]
    shutil.copyfile(img, img.with_name("added.png"))
    (sorted((folder / "train" / "good").glob("*.png"))[0]).unlink()
    assert (workload.from_folder(folder).n_train, workload.from_folder(folder).n_test) == (5, 4)


@pytest.mark.parametrize("backbone, layers", [("tf_efficientnet_lite0", ["blocks[1]", "blocks[2]"]),
                                              ("tf_efficientnet_lite0", None), ("resnet18", ["layer1", "layer2"])])
def test_jobs_are_sized_with_the_features_geometry(backbone, layers, synth_root, tmp_path):
    """The channels and grid that size every job are those the features stage writes: with a stride-4 layer
    hooked, 4x the locations of the stride-8 default and the hooked layers' channels (the sizing assumed
    image_size // 8 and the default layers' channels whatever was hooked)."""
    from dfr.stages import features
    from dfr.stages.cache import FeatureCache

    cfg = config.validate({"datasets": {"s": {"kind": "folder", "root": str(synth_root), "categories": ["disc"]}},
                           "device": "cpu", "data": {"image_size": 96},
                           "features": {"backbone": backbone, "weights": "none", "layers": layers, "batch_size": 4}})
    index = tmp_path / "index.csv"
    data.write_index(data.index_category(synth_root, "disc"), index)
    features.extract(index, "test", tmp_path / "f.h5", {**keys.feature_params(cfg), **keys.feature_runtime(cfg)})
    with FeatureCache(tmp_path / "f.h5") as cache:
        c, h, w = cache.shape[1:]
    assert resources.geometry(cfg) == (c, h * w)
    if layers and layers[0] in ("blocks[1]", "layer1"):
        assert h == 96 // 4
