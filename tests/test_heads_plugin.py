"""Heads are plugins: a head defined here alone (no module of the package changed) is planned, fitted, mapped,
bundled and served by ``dfr predict``; the shipped heads are found by folder, installed ones by entry point;
and no module outside a head's own folder names a head's kind."""

import ast
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from conftest import ROOT
from dfr import cli
from dfr.heads import common
from dfr.io import DFRError
from dfr.planning import config as dfr_config
from dfr.planning import heads as registry
from dfr.planning import keys, resources
from dfr.stages import data, features, metrics

PACKAGE = ROOT / "workflow" / "dfr"


class CentreDistance(nn.Module):
    """A(x): each location's distance to the training images' mean feature vector, times ``scale``."""

    def __init__(self, mean: torch.Tensor, scale: float):
        super().__init__()
        self.register_buffer("mean", mean.float().view(1, -1, 1, 1))
        self.scale = float(scale)

    def anomaly_map(self, f: torch.Tensor) -> torch.Tensor:
        return self.scale * (f.float() - self.mean).pow(2).sum(1).sqrt()


class CentreHead(registry.Head):
    kind = "toy_centre"
    title = "a test's head: the distance to the mean feature vector"
    schema = {"type": "object", "additionalProperties": False, "default": {},
              "properties": {"scale": {"type": "number", "exclusiveMinimum": 0, "default": 1.0}}}

    def key_prefix(self, params):
        return f"centre{params['scale']:g}"

    def file_mb(self, cfg, channels, locations, n_fit):
        return channels * 4 / 2**20 + 1

    def estimate(self, job):
        return resources.BASE_MB["torch"] + job.wl.n_train * job.channels * job.locations * 4 / 2**20, 1.0

    def fit(self, features, split_json, out_model, out_history, params, pca_json=None, out_info=None):
        from dfr.stages.cache import FeatureCache

        split = json.loads(open(split_json).read())
        with FeatureCache(features) as cache:
            c, h, w = cache.shape[1:]
            mean, _ = common.channel_stats(cache, cache.positions(split["train"]))
        model = CentreDistance(torch.from_numpy(mean), params["scale"])
        common.write_fitted(model, self.kind, params, out_model, out_history, out_info, in_channels=c,
                            grid=[h, w], seconds=0.0, losses={}, parameters=c)
        return {"channels": c}

    def from_checkpoint(self, ckpt):
        sd = ckpt["state_dict"]
        return CentreDistance(sd["mean"].flatten(), ckpt["params"]["scale"])


@pytest.fixture
def centre_head():
    head = registry.register(CentreHead())
    try:
        yield head
    finally:
        registry.unregister(head.kind)


def _run(*argv):
    assert cli.main([str(a) for a in argv]) == 0, argv


def test_a_head_defined_in_a_test_runs_fit_maps_bundle_and_predict(centre_head, synth_root, tmp_path):
    cfg = dfr_config.validate({
        "datasets": {"s": {"kind": "folder", "root": str(synth_root), "categories": ["disc"]}},
        "device": "cpu", "model": "toy_centre", "toy_centre": {"scale": 2.0}, "scoring": {"top_k": 4},
        "data": {"image_size": 64, "val_fraction": 0.25},
        "features": {"backbone": "tf_efficientnet_lite0", "weights": "none", "batch_size": 4}})
    assert cfg["toy_centre"] == {"scale": 2.0}  # its section, validated and defaulted by the schema
    mp = keys.model_params(cfg)
    assert mp["kind"] == "toy_centre" and mp["scale"] == 2.0
    assert keys.model_key(cfg).startswith("centre2-") and not keys.uses_pca(cfg)
    est = resources.estimate(cfg, "train", "s", "disc")
    assert est["mem_mb"] > resources.BASE_MB["torch"] and est["runtime"] >= 1

    index, split = tmp_path / "index.csv", tmp_path / "split.json"
    data.write_index(data.index_category(synth_root, "disc"), index)
    data.write_split(index, split, 0.25, 0)
    fp = {**keys.feature_params(cfg), **keys.feature_runtime(cfg), "num_workers": 0}
    for s in ("train", "test"):
        features.extract(index, s, tmp_path / f"{s}.h5", fp)
    m = tmp_path / "model.pt"
    _run("train", "--features", tmp_path / "train.h5", "--split-json", split, "--model", m,
         "--history", tmp_path / "history.csv", "--info", tmp_path / "model.json", "--params", json.dumps(mp))
    maps = tmp_path / "maps.h5"
    _run("maps", "--model", m, "--train-features", tmp_path / "train.h5", "--test-features", tmp_path / "test.h5",
         "--split-json", split, "--out", maps, "--params", json.dumps(keys.maps_params(cfg)))
    scores = tmp_path / "scores.csv"
    _run("scores", "--maps", maps, "--out", scores, "--params", json.dumps(keys.scores_params(cfg)))
    mparams = {**keys.metrics_params(cfg, "s", []), "dataset": "s", "category": "disc", "pixel": False}
    metrics.evaluate(scores, maps, tmp_path / "metrics.json", mparams)
    bundle = tmp_path / "bundle.pt"
    _run("bundle", "--model", m, "--metrics", tmp_path / "metrics.json", "--out", bundle,
         "--params", json.dumps(keys.bundle_params(cfg, [])))
    _run("predict", bundle, synth_root / "disc" / "test", "--out", tmp_path / "pred", "--no-images")

    ours = pd.read_csv(scores).query("split == 'test'")
    served = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    served["name"] = served.path.map(lambda p: "/".join(p.split("/")[-2:]))
    ours = ours.assign(name=ours.path.map(lambda p: "/".join(p.split("/")[-2:])))
    both = ours.merge(served, on="name", suffixes=("", "_served"))
    assert len(both) == len(ours) > 0
    np.testing.assert_allclose(both.score_served, both.score, rtol=1e-4)


def test_an_unknown_kind_and_a_taken_kind_are_refused(centre_head):
    with pytest.raises(DFRError, match=r"no head of kind 'nope'; the heads are cae, .*toy_centre"):
        registry.get("nope")
    with pytest.raises(DFRError, match="already registered"):
        registry.register(CentreHead())
    with pytest.raises(DFRError, match=r"model: 'nope' is not one of \['cae', "):
        dfr_config.validate({"datasets": {}, "model": "nope"})


def test_the_shipped_heads_are_found_by_folder_and_an_installed_one_by_entry_point(tmp_path):
    shipped = sorted(p.parent.name for p in (PACKAGE / "heads").glob("*/__init__.py"))
    assert registry.kinds()[:len(shipped)] == shipped
    (tmp_path / "plug_head.py").write_text(
        "from dfr.planning.heads import Head\n\n\nclass Plug(Head):\n    kind = 'plug'\n    title = 'a plugin'\n\n\n"
        "HEAD = Plug()\n")
    dist = tmp_path / "plug_head-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plug-head\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[dfr.heads]\nplug = plug_head:HEAD\n")
    code = ("import sys; from dfr.planning import config, heads; print(heads.kinds()); "
            "print(config.schema()['properties']['model']['enum'])")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT / 'workflow'}", "PATH": ""}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str([*shipped, "plug"])] * 2


def _constants(tree):
    """Every string constant of a module that is not a docstring, f-strings' literal parts included."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_no_module_outside_a_heads_folder_names_its_kind():
    """Kinds as strings (``"cae"``, ``cfg["gaussian"]``, ``"... flow.lr ..."``) or imports of a head's folder are
    found only inside that head's own folder. The developer tools (dfr/tools) are apart: they time the paper's
    CAE by name, as their docs say."""
    kinds = [p.parent.name for p in (PACKAGE / "heads").glob("*/__init__.py")]
    word = re.compile(r"(?<![\w.])(" + "|".join(kinds) + r")(\.[a-z_]+|$)")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "tools" or (rel.parts[0] == "heads" and rel.parts[1] in kinds):
            continue
        tree = ast.parse(path.read_text())
        for n in _constants(tree):
            if n.value in kinds or word.search(n.value):
                found.append(f"{rel}:{n.lineno}: {n.value[:60]!r}")
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module and (
                    any(n.module.startswith(f"dfr.heads.{k}") for k in kinds)
                    or (n.module == "dfr.heads" and {a.name for a in n.names} & set(kinds))):
                found.append(f"{rel}:{n.lineno}: imports {n.module}")
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.lstrip().startswith("#") and re.search(r"[\"'](" + "|".join(kinds) + r")[\"'.]", line):
                found.append(f"{path.name}:{i}: {line.strip()[:60]}")
    assert not found, "a head's kind named outside its folder:\n" + "\n".join(found)


def test_the_grep_finds_a_kind_named_elsewhere(tmp_path):
    tree = ast.parse('"""the cae is in a docstring"""\nx = cfg["cae"]\ny = f"try {a} flow.lr"\n')
    values = [n.value for n in _constants(tree)]
    assert "cae" in values and any("flow.lr" in v for v in values)
    assert not any("docstring" in v for v in values)
