"""The whole demo DAG for real through Snakemake on a tiny config, then incremental-rerun plans."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import RUNS, ROOT, SNAKEMAKE, TINY, planned_jobs, snakemake, tiny_paths  # noqa: F401 (re-exported)

pytestmark = pytest.mark.slow
def test_every_artifact(tiny_run):
    from sklearn.metrics import roc_auc_score

    wd = tiny_run
    exp = wd / "results" / "tiny" / "synth"
    feats = list((wd / "results" / "features" / "synth" / "disc").glob("tf_efficientnet_lite0-128-*"))
    assert len(feats) == 1
    with h5py.File(feats[0] / "train.h5") as f:
        assert f["features"].shape == (10, 152, 16, 16)
        assert json.loads(f.attrs["params"])["backbone"] == "tf_efficientnet_lite0"
    with h5py.File(feats[0] / "test.h5") as f:
        assert f["features"].shape[0] == 4 + 4 * 2
    for cat in ("disc", "grain"):
        d = exp / cat
        p = tiny_paths(wd, TINY, "synth", cat)
        assert p["model"].parent.parent == wd / "results" / "models" / "synth" / cat  # shared, keyed
        split = json.loads(p["split"].read_text())
        assert len(split["val"]) == 4 and len(split["train"]) == 6
        pca = json.loads(p["pca"].read_text())
        assert 1 <= pca["latent_dim"] <= 152 and pca["explained_at_d"] >= 0.95
        hist = pd.read_csv(p["history"])
        assert list(hist.epoch) == [1, 2, 3]
        with h5py.File(p["maps"]) as f:
            assert f["A"].shape == (4 + 12, 16, 16)  # the 4 held-out normals and the 12 test images
        scores = pd.read_csv(d / "scores.csv")
        assert (scores.split == "val").sum() == 4 and (scores.split == "test").sum() == 12
        m = json.loads((d / "metrics.json").read_text())
        test = scores[scores.split == "test"]  # the metrics are those of the scores and curves they were made from
        assert m["image_auroc"] == pytest.approx(roc_auc_score(test.label, test.score), abs=1e-9)
        assert set(m["thresholds"]) == {"f1_optimal", "val_mean_std", "val_percentile"}
        assert m["thresholds"]["f1_optimal"]["oracle"] is True
        c = m["curves"]["pixel"]
        fpr, tpr, pro = (np.asarray(c[k]) for k in ("fpr", "tpr", "pro"))
        assert m["pixel"]["auroc"] == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-4)
        o = np.argsort(fpr, kind="stable")
        lim = c["fpr_limit"]
        fx = np.append(fpr[o][fpr[o] <= lim], lim)
        px = np.append(pro[o][fpr[o] <= lim], np.interp(lim, fpr[o], pro[o]))
        assert m["pixel"]["au_pro"] == pytest.approx(np.trapezoid(px, fx) / lim, abs=1e-3)
        assert m["params"]["alpha"] == 3.0 and "torch" in m["versions"]
        for png in ("loss", "score_histogram", "roc", "confusion_matrix", "pro_curve", "heatmaps_most",
                    "heatmaps_least"):
            assert (d / "plots" / f"{png}.png").stat().st_size > 1000
    table = pd.read_csv(wd / "results" / "tiny" / "tables" / "synth.csv")
    assert list(table.Category) == ["disc", "grain", "Mean"]
    assert table.AUROC.iloc[-1] == pytest.approx(table.AUROC.iloc[:2].mean())
    md = (wd / "results" / "tiny" / "tables" / "synth.md").read_text()
    assert "| **Mean** |" in md and "oracle" in md
    for rule in ("synthetic", "index", "features", "split", "pca", "train", "maps",
                 "tiny/scores", "tiny/metrics", "tiny/plots", "tiny/tables", "tiny/bundle"):
        assert list((wd / "results" / "logs" / rule).rglob("*.log")), f"no log for {rule}"
    assert not list((wd / "results").rglob(".*.tmp")), "temporary files left behind"


@pytest.mark.extended
def test_rerun_plans_touch_only_what_changed(tiny_run):
    """The key-completeness table of tests/test_keys.py, dry-run against the finished run: for one key of each
    set of artifacts it shapes, the plan is exactly those artifacts' jobs and what follows from them; every
    key that shapes nothing, changed all at once, plans nothing."""
    from test_keys import ROWS, closure, with_key

    wd = tiny_run
    assert planned_jobs(snakemake(wd, TINY, "-n").stdout) == {}
    groups: dict[frozenset, tuple] = {}
    noop = TINY
    for key, rows in ROWS.items():
        for value, shaped in rows:
            if shaped:
                groups.setdefault(frozenset(shaped), (key, value))
            else:
                noop = with_key(noop, key, value)
    groups[frozenset({"features"})] = ("features.amp", "bf16")  # bf16 features are not fp32 features
    assert planned_jobs(snakemake(wd, noop, "-n").stdout) == {}
    for shaped, (key, value) in groups.items():
        r = snakemake(wd, with_key(TINY, key, value), "-n")
        assert r.returncode == 0, r.stderr[-3000:]
        assert set(planned_jobs(r.stdout)) == closure(set(shaped)), f"{key}: {value!r}"

    # an ensemble of the config itself and a second CAE seed: only the new member is trained, then fused
    ens_edit = {**TINY, "ensemble": {"members": [{}, {"cae.seed": 1}]}}
    jobs = planned_jobs(snakemake(wd, ens_edit, "-n").stdout)
    assert jobs.get("train") == 2 and jobs.get("maps") == 2 and jobs.get("ensemble") == 2
    assert not {"features", "pca", "split"} & set(jobs) and jobs.get("bundle") == 2  # shared cache and split


@pytest.mark.extended
def test_weights_and_code_versions_plan_their_stage_and_what_follows(tiny_copy, tmp_path):
    """The weights file replaced at the same path, and one stage's code version bumped: that stage and everything
    after it are planned, nothing before it. A touched file with the same content plans nothing."""
    import shutil

    from test_keys import closure

    wd = tiny_copy
    weights = wd / "weights" / "lite0.pth"
    os.utime(weights)  # touched: newer than every feature cache, the same content
    assert planned_jobs(snakemake(wd, TINY, "-n").stdout) == {}
    copy = tmp_path / "lite0.pth"
    shutil.copyfile(weights, copy)
    try:
        with open(weights, "ab") as f:  # replaced in place by another file
            f.write(b"\0" * 16)
        assert set(planned_jobs(snakemake(wd, TINY, "-n").stdout)) == closure({"features"})
    finally:
        shutil.copyfile(copy, weights)
    assert planned_jobs(snakemake(wd, TINY, "-n").stdout) == {}

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "workflow", repo / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "Snakefile", repo / "Snakefile")
    def version(stage):  # a stage's CODE_VERSIONS entry, or a head's version
        return rf'(CODE_VERSIONS = {{[^}}]*"{stage}": )(\d+)' if stage else r"(\n    version = )(\d+)"

    for module, stage, artifact in (("stages/features", "features", "features"), ("heads/cae/__init__", None, "train"),
                                    ("stages/metrics", "metrics", "metrics")):
        src = repo / "workflow" / "dfr" / f"{module}.py"
        text = src.read_text()
        bumped = re.sub(version(stage), lambda m: m.group(1) + str(int(m.group(2)) + 1), text, count=1)
        assert bumped != text, f"{module}.py has no code version for {stage or 'its head'}"
        src.write_text(bumped)
        cfg_path = wd / "config.yaml"
        cfg_path.write_text(yaml.safe_dump(TINY))
        r = subprocess.run([SNAKEMAKE, "--snakefile", str(repo / "Snakefile"), "--directory", str(wd),
                            "--configfile", str(cfg_path), "--cores", "2", "-n"], capture_output=True, text=True,
                           timeout=300)
        src.write_text(text)
        assert r.returncode == 0, r.stderr[-3000:]
        assert set(planned_jobs(r.stdout)) == closure({artifact}), f"{module}.py's {stage or 'head'} bumped"


def test_bad_config_fails_with_readable_message(tmp_path):
    bad = {**TINY, "cae": {"epochs": -1}}
    r = snakemake(tmp_path, bad, "-n")
    assert r.returncode != 0
    assert "cae.epochs: -1 is less than the minimum of 1" in r.stdout + r.stderr


def test_bad_dataset_fails_naming_the_file(tmp_path):
    root = tmp_path / "data" / "thing"
    (root / "train" / "good").mkdir(parents=True)
    cfg = {**TINY, "datasets": {"mine": {"kind": "folder", "root": str(tmp_path / "data"), "categories": ["thing"]}}}
    r = snakemake(tmp_path, cfg)
    assert r.returncode != 0
    log = (tmp_path / "results" / "logs" / "index" / "mine" / "thing.log").read_text()
    assert f"{root / 'train' / 'good'}: no images (empty split)" in log
    assert not (tmp_path / "results" / "prepared" / "mine" / "thing" / "index.csv").exists()


@pytest.mark.extended
def test_incremental_reruns_execute_only_what_changed(tiny_copy):
    """Measured for real on one category (what a rerun runs is decided per category): a CAE-only edit runs no
    feature job, a top-k edit no training job."""
    wd = tiny_copy
    target = "results/tiny/synth/disc/metrics.json"
    t0 = time.perf_counter()
    r = snakemake(wd, {**TINY, "cae": {**TINY["cae"], "epochs": 2}}, target)
    t_cae = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = planned_jobs(r.stdout + r.stderr)
    assert jobs.get("train") == 1 and "features" not in jobs and "pca" not in jobs and "split" not in jobs, jobs
    assert {"maps", "scores", "metrics"} <= set(jobs), jobs
    t0 = time.perf_counter()
    r = snakemake(wd, {**TINY, "cae": {**TINY["cae"], "epochs": 2}, "scoring": {"top_k": 3}}, target)
    t_topk = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = planned_jobs(r.stdout + r.stderr)
    assert jobs == {"scores": 1, "metrics": 1}, jobs
    first = RUNS.get("tiny", float("nan"))
    print(f"first run {first:.0f} s (2 categories); one category's rerun after a CAE edit {t_cae:.0f} s, "
          f"after a top-k edit {t_topk:.0f} s")  # printed: wall time is no assertion


# ---- data changes on disk rerun exactly what they touch ----

@pytest.fixture
def data_run(tiny_copy):
    """A copy of the tiny run: its generated categories are MVTec-layout folders under results/datasets/."""
    return tiny_copy, TINY


def _plan(wd, cfg):
    r = snakemake(wd, cfg, "-n", "--quiet", "all")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    jobs = planned_jobs(out)
    if jobs:  # which categories: the index jobs' outputs
        r = snakemake(wd, cfg, "-n")
        jobs["categories"] = sorted(set(re.findall(r"output: results/prepared/synth/(\w+)/index\.csv", r.stdout)))
    return jobs


@pytest.mark.extended
def test_data_changes_rerun_their_category_only(data_run):
    import shutil

    wd, cfg = data_run
    data = wd / "results" / "datasets" / "synth"
    assert _plan(wd, cfg) == {}  # nothing changed: nothing to do
    train = data / "disc" / "train" / "good"
    keep = wd / "keep.png"
    shutil.copy2(train / "003.png", keep)
    downstream = {"index", "features", "split", "pca", "train", "maps", "scores", "metrics", "plots", "tables"}

    shutil.copy2(train / "003.png", train / "100.png")  # an image added (same content, same mtime)
    jobs = _plan(wd, cfg)
    assert jobs["categories"] == ["disc"] and downstream <= set(jobs) and jobs["index"] == 1
    assert jobs["train"] == 1 and jobs["features"] == 2  # grain untouched
    (train / "100.png").unlink()
    assert _plan(wd, cfg) == {}  # as before: nothing to do

    (train / "003.png").unlink()  # an image removed
    jobs = _plan(wd, cfg)
    assert jobs["categories"] == ["disc"] and jobs["index"] == 1
    shutil.copy2(keep, train / "003.png")
    assert _plan(wd, cfg) == {}

    grain = data / "grain" / "test" / "good" / "001.png"  # replaced: other pixels, same name
    saved = wd / "grain.png"
    shutil.copy2(grain, saved)
    Image = __import__("PIL.Image", fromlist=["Image"])
    Image.fromarray(np.full((200, 200), 128, np.uint8)).save(grain)
    jobs = _plan(wd, cfg)
    assert jobs["categories"] == ["grain"] and jobs["features"] == 2
    shutil.copy2(saved, grain)
    assert _plan(wd, cfg) == {}

    mask = sorted((data / "disc" / "ground_truth").rglob("*_mask.png"))[0]  # a mask edited
    st = mask.stat()
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    jobs = _plan(wd, cfg)
    assert jobs["categories"] == ["disc"] and jobs["index"] == 1
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _plan(wd, cfg) == {}


# ---- a trained model in use: the bundle and dfr predict give the pipeline's numbers ----

def test_predict_with_the_bundle_gives_the_pipelines_scores_and_maps(tiny_run, tmp_path):
    import torch
    from PIL import Image

    from dfr.stages import predict, scoring

    # back to TINY after the rerun tests' edits: its models are kept under their keys, so only the
    # experiment's own scores, metrics and bundle are remade
    r = snakemake(tiny_run, TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not {"train", "maps", "features"} & set(planned_jobs(r.stdout + r.stderr))
    cat = tiny_run / "results" / "tiny" / "synth" / "disc"
    scores = pd.read_csv(cat / "scores.csv")
    test = scores[scores.split == "test"]
    paths = [str(tiny_run / p) if not os.path.isabs(p) else p for p in test.path]
    broken = tmp_path / "broken.png"
    broken.write_bytes(Image.open(paths[0]).tobytes()[:100])  # not an image: reported, skipped
    out = tmp_path / "pred"
    t0 = time.perf_counter()
    r = subprocess.run([str(Path(sys.executable).parent / "dfr"), "predict", str(cat / "bundle.pt"), *paths[:3],
                        str(Path(paths[3]).parent.parent / "*" / "*.png"), str(broken), "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tiny_run,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "workflow")})
    assert r.returncode == 1, r.stderr[-3000:]  # one image could not be read: the others are scored
    print(f"dfr predict: {r.stdout.strip()} ({time.perf_counter() - t0:.1f} s with start-up)")
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert "unreadable or truncated image" in pred.set_index("path").loc[str(broken), "error"]
    got = pred[pred.error == ""].drop_duplicates("path").set_index("path").score.astype(float)
    want = pd.Series(test.score.to_numpy(), index=paths)
    assert set(want.index) <= set(got.index)
    np.testing.assert_allclose(got[want.index], want, rtol=1e-5)
    meta = json.loads((out / "predictions.json").read_text())
    t = meta["threshold"]["value"]
    assert meta["threshold"]["name"] == "val_mean_std" and meta["skipped"] == 1
    assert (pred[pred.error == ""].anomalous == (pred[pred.error == ""].score.astype(float) >= t).astype(str)).all()
    assert len(list((out / "heatmaps").glob("*.png"))) == len(pred) - 1 and list((out / "masks").glob("*_mask.png"))
    # the same A(x) as maps.h5, image for image
    m = scoring.Maps(tiny_paths(tiny_run, TINY, "synth", "disc")["maps"])
    b = predict.load_bundle(cat / "bundle.pt")
    pr = predict.Predictor(b, "cpu")
    (x,) = (torch.stack(t) for t in zip(*[pr.preprocess(predict.load_image(p)) for p in paths[:4]]))
    ids = list(m.meta.image_id)
    ref = np.stack([m.A[ids.index(i)] for i in test.image_id[:4]])
    # f(x) passes through the float16 cache in both; a value computed in another batch composition can round
    # to the neighbouring float16, so a few locations differ by ~1e-5 relative: the maps agree to 1e-4
    np.testing.assert_allclose(pr.maps((x,)), ref, rtol=1e-4)
    torch.save({**b, "format": 7}, tmp_path / "future.pt")
    from dfr.io import DFRError

    with pytest.raises(DFRError, match=r"future\.pt: bundle file with format 7, this version of DFR reads format 3; remake it"):
        predict.load_bundle(tmp_path / "future.pt")


def test_an_ensemble_bundle_serves_the_ensembles_scores_and_maps(tiny_copy, tmp_path):
    """An ensemble of three members on two feature settings (TINY's CAE and a Gaussian on its 128 px features, a
    Gaussian on 96 px features): its bundle holds every member, their calibration statistics, the fusion grid and
    the thresholds; dfr predict runs each backbone once per image and gives the pipeline's s(x) and fused A(x)."""
    import torch

    from dfr.stages import predict, scoring

    wd = tiny_copy
    ens = {**TINY, "experiment": "tinyens",
           "ensemble": {"members": [{}, {"model": "gaussian"}, {"model": "gaussian", "data.image_size": 96}]}}
    target = "results/tinyens/synth/disc/bundle.pt"
    r = snakemake(wd, ens, target)
    assert r.returncode == 0, r.stderr[-3000:]
    p = tiny_paths(wd, ens, "synth", "disc")
    b = predict.load_bundle(p["bundle"])
    assert len(b["members"]) == 3 and [m["feature_set"] for m in b["members"]] == [0, 0, 1]
    assert [fs["features"]["image_size"] for fs in b["feature_sets"]] == [128, 96]
    assert b["fusion"] == {"grid": [16, 16]}
    fused = scoring.maps_params(p["maps"])
    assert [(m["calib_mean"], m["calib_std"]) for m in b["members"]] == \
        [(st["calib_mean"], st["calib_std"]) for st in fused["normalisation"]]
    metrics = json.loads(Path(p["metrics"]).read_text())
    # the calibrated thresholds, and one set with each k of labelled defective images (thresholds.few_labels)
    assert {k: v["threshold"] for k, v in b["thresholds"].items()} == \
        {k: v["threshold"] for k, v in metrics["thresholds"].items()} | \
        {f"few_label_{k}": v["threshold"] for k, v in metrics["few_label"]["k"].items() if k != "0" and v["applicable"]}
    scores = pd.read_csv(p["scores"])
    # calibration and thresholds on disjoint held-out normal images
    calib, val = set(scores.image_id[scores.split == "calib"]), set(scores.image_id[scores.split == "val"])
    assert calib and val and not calib & val and sorted(calib) == sorted(fused["calibration"])
    test = scores[scores.split == "test"]
    paths = [str(wd / q) if not os.path.isabs(q) else q for q in test.path]
    # in the batches of the pipeline's features and maps jobs (features.batch_size, index order): the CAE's A(x)
    # is a difference of near-equal values, and another batch shape sums it in another order
    df = predict.predict(p["bundle"], paths, tmp_path / "pred", device="cpu", batch_size=8, heatmaps=False)
    np.testing.assert_allclose(df.set_index("path").score[paths].to_numpy(), test.score.to_numpy(), rtol=1e-5)
    pr = predict.Predictor(b, "cpu")
    assert len(pr.sets) == 2 and len(pr.inputs) == 2  # one backbone pass per feature setting
    xs = tuple(torch.stack(t) for t in zip(*[pr.preprocess(predict.load_image(q)) for q in paths[:5]]))
    m = scoring.Maps(p["maps"])
    ids = list(m.meta.image_id)
    ref = np.stack([m.A[ids.index(i)] for i in test.image_id[:5]])
    # the fused maps are z-scores of order 1, each member's made from the float16 cache as in the pipeline
    got = pr.maps(xs)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    # dfr export: the ensemble as one TorchScript graph (traced on one image, run on five) gives the bundle's
    from dfr.stages import export

    export.export(p["bundle"], tmp_path / "ens.ts")
    graph, meta = export.load(tmp_path / "ens.ts")
    assert [i["image_size"] for i in meta["inputs"]] == [128, 96]
    with torch.no_grad():
        a, s = graph(*xs)
    np.testing.assert_allclose(a.numpy(), got, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.numpy(), pr.scores(got), rtol=1e-5)


@pytest.mark.extended
def test_a_cut_scores_table_is_refused_and_the_printed_hint_remakes_it(tiny_copy):
    """scores.csv cut at a row boundary after a finished run: the rerun's metrics job refuses it (it used to
    rebuild the metrics from what was left) and prints a command; that command remakes it and what follows."""
    wd = tiny_copy
    scores = wd / "results" / "tiny" / "synth" / "disc" / "scores.csv"
    lines = scores.read_text().splitlines(keepends=True)
    scores.write_text("".join(lines[:7]))
    r = snakemake(wd, TINY)
    assert r.returncode != 0
    log = (wd / "results" / "logs" / "tiny" / "metrics" / "synth" / "disc.log").read_text()
    hint = re.search(r"remake it: add (--forcerun \S+) to your snakemake command", log)
    assert hint and "6 rows where its maps hold" in log and "Traceback" not in log, log[-2000:]
    r = snakemake(wd, TINY, *hint.group(1).split())
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(pd.read_csv(scores)) == len(lines) - 1
    m = json.loads((wd / "results" / "tiny" / "synth" / "disc" / "metrics.json").read_text())
    assert m["n_test"] + m["n_val"] == len(lines) - 1


@pytest.mark.extended
def test_a_second_run_on_the_same_results_is_refused_naming_the_holder(tiny_copy):
    """Another working directory's run holding results/ (its lock names a live process): this run is refused
    before any job starts; once that run is over, the run goes through."""
    import socket

    wd = tiny_copy
    lock = wd / "results" / ".dfr-run.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "cwd": "/elsewhere",
                                "started": "2026-12-03 10:00:00"}))
    edit, target = {**TINY, "scoring": {"top_k": 3}}, "results/tiny/synth/disc/scores.csv"
    r = snakemake(wd, edit, target)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "another run writes these results" in out and "/elsewhere" in out, out[-3000:]
    assert "Traceback" not in out
    lock.unlink()
    r = snakemake(wd, edit, target)
    assert r.returncode == 0, r.stderr[-3000:]
    assert planned_jobs(r.stdout + r.stderr) == {"scores": 1}
    assert not lock.exists()


# ---- the core count: a runtime-only setting that may move results only within the tolerance docs/reruns-and-guards.md states ----

@pytest.mark.extended
def test_one_core_gives_the_two_core_results_within_the_stated_tolerance(tiny_run, tmp_path):
    """One category of TINY made again from scratch with --cores 1 (every job on one thread) against the
    session's --cores 2 run. Thread count changes the order of floating-point sums in the backbone and the CAE,
    so f(x) may round to the neighbouring float16 and training drifts by float rounding. docs/reruns-and-guards.md states the
    tolerance this test holds: f(x) within one float16 step or 1e-4 (at most 1 % of values moved), s(x) within 5 %
    relative, image AUROC within 0.05 — not bit-equal."""
    target = "results/tiny/synth/disc/metrics.json"
    r = snakemake(tmp_path, TINY, target, "--cores", "1")  # the last --cores wins
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = (tiny_paths(wd, TINY, "synth", "disc") for wd in (tmp_path, tiny_run))
    with h5py.File(one["features_train"], "r") as a, h5py.File(two["features_train"], "r") as b:
        fa, fb = a["features"][:], b["features"][:]
    # one float16 step of the value or, where a sum cancels to near 0 and float16's steps are finer than the
    # float32 rounding of its terms, 1e-4 absolute (seen: 57 of 389 120 values, by up to 7.6e-6, all |f| < 0.01)
    step = np.spacing(np.maximum(np.abs(fa), np.abs(fb)).astype(np.float16)).astype(np.float32)
    moved = fa != fb
    diff = np.abs(fa.astype(np.float32) - fb.astype(np.float32))
    assert np.all(diff <= np.maximum(step, 1e-4)), f"f(x) moved by up to {diff.max():.2e}"
    sa = pd.read_csv(one["scores"]).set_index("image_id").score
    sb = pd.read_csv(two["scores"]).set_index("image_id").score
    assert list(sa.index) == list(sb.index)
    rel = float(np.max(np.abs(sa - sb) / np.abs(sb)))
    ma, mb = (json.loads(Path(p).read_text()) for p in (one["metrics"], two["metrics"]))
    print(f"--cores 1 vs 2: {int(moved.sum())} of {moved.size} float16 values of f(x) moved by one step; "
          f"s(x) max relative difference {rel:.2e}; image AUROC {ma['image_auroc']:.4f} vs {mb['image_auroc']:.4f}")
    assert moved.mean() <= 0.01
    assert rel <= 0.05
    assert abs(ma["image_auroc"] - mb["image_auroc"]) <= 0.05
