"""Complete keys, driven by the schema: every config key says which artifacts it shapes, and changing it
changes exactly those artifacts' keys (and what follows from them). A new schema key without a row here
fails. tests/test_workflow.py dry-runs a representative of each row against a finished run."""

import copy
import json
import os

import pytest

from conftest import TINY, place_weights
from dfr.planning import config as dfr_config
from dfr import fileid
from dfr.planning import heads, keys, layout, overrides, plan

# What each artifact (named by the rule that makes it) feeds, for a single CAE with latent_dim auto.
DOWNSTREAM = {
    "synthetic": {"index"}, "index": {"features", "split"}, "features": {"pca", "train", "maps"},
    "split": {"pca", "train", "maps"}, "pca": {"train"}, "train": {"maps", "plots", "bundle"},
    "maps": {"scores", "metrics", "plots"}, "scores": {"metrics", "plots"}, "metrics": {"plots", "bundle", "tables"},
    "plots": set(), "bundle": set(), "tables": set(),
}
ALL = set(DOWNSTREAM)
EXPERIMENT = {"scores", "metrics", "plots", "bundle", "tables"}

# schema key -> [(a new value, the artifacts it shapes directly)], for TINY (a synthetic dataset, the CAE);
# ``datasets.*`` is TINY's dataset. A key that shapes nothing of TINY (a Gaussian's setting on a CAE, a download
# setting on a generated dataset, a runtime-only setting) has an empty set: it must change nothing.
ROWS = {
    "experiment": [("other", EXPERIMENT)],
    "results": [("elsewhere", ALL)],
    "seed": [(1, {"synthetic", "split", "pca", "train", "metrics"})],  # metrics: the few-label draws
    "device": [("cuda", {"features", "train", "maps"}), ("cuda:1", {"features", "train", "maps"})],  # dfr.planning.devices
    "cluster": [(True, set())],  # TINY runs on the CPU (device: cpu); tests/test_devices.py for auto
    "resources.gpu": [(0, set())], "resources.threads": [(1, set())], "resources.mem_mb_min": [(4000, set())],
    "resources.start_s": [(45, set())],
    "datasets.*.root": [("elsewhere", set())],  # a generated dataset lives under results/
    "datasets.*.archive": [("x.tar", set())], "datasets.*.sha256": [("0" * 64, set())],
    "datasets.*.urls": [(["https://example.invalid/x.tar"], set())],
    "datasets.*.eval_size": [(64, {"metrics"})], "datasets.*.reference": [("mvtec_ad", {"tables"})],
    "datasets.*.synthetic.n_train": [(12, {"synthetic"})],
    "datasets.*.synthetic.n_test_good": [(5, {"synthetic"})],
    "datasets.*.synthetic.n_test_defect": [(3, {"synthetic"})],
    "datasets.*.synthetic.scale": [(0.5, set())], "datasets.*.synthetic.size_scale": [(0.5, set())],  # shape only
    "datasets.*.synthetic.defects": [(["scratch", "stain"], {"synthetic"})],
    "datasets.*.synthetic.layout": [("mvtec_ad2", {"synthetic"})],  # the default ("mvtec") is left out of the key
    "data.image_size": [(160, {"features"})], "data.normalize": [(False, {"features"})],
    "data.val_fraction": [(0.3, {"split"})],
    "features.backbone": [("tf_efficientnet_lite1", {"features"})],
    "features.weights": [("none", {"features"}), ("imagenet", {"features"})],
    "features.layers": [(["blocks[2]", "blocks[3]"], {"features"})],
    "features.pool": [(5, {"features"})], "features.grid": [(12, {"features"})],
    "features.padding": [("reflect", {"features"})], "features.dtype": [("float32", {"features"})],
    "features.amp": [("bf16", {"features"})],
    "features.batch_size": [(3, set())], "features.num_workers": [(1, set())],
    "features.channels_last": [(False, set())],
    "pca.variance": [(0.9, {"pca"})],
    # 8 training images x 16² locations = 2048 vectors: a cap above that samples nothing, one below does
    "pca.max_samples": [(300000, set()), (1000, {"pca"})],
    "model": [("gaussian", {"train"}), ("memory_bank", {"train"}), ("flow", {"train"})],
    "gaussian.channels": [(100, set())], "gaussian.shrinkage": [(0.1, set())],
    "gaussian.covariance": [("shared", set())],
    # a head's settings shape its model alone (tests/test_memory_bank.py): nothing of a CAE
    "memory_bank.coreset": [(0.1, set())], "memory_bank.projection": [(64, set())],
    "memory_bank.sigma": [(0.0, set())],
    "flow.channels": [(64, set())], "flow.blocks": [(2, set())], "flow.hidden": [(32, set())],
    "flow.kernel": [(1, set())], "flow.clamp": [(1.0, set())], "flow.epochs": [(3, set())],
    "flow.batch_size": [(4, set())], "flow.lr": [(0.01, set())],
    "cae.latent_dim": [(8, {"train"})], "cae.normalize": [(False, {"train"})],
    "cae.batchnorm": [(False, {"train"})], "cae.kernel": [(3, {"train"})],
    "cae.padding": [("zeros", set())], "cae.depthwise": [(True, set())],  # of a 3x3 CAE only
    "cae.epochs": [(4, {"train"})], "cae.seed": [(5, {"train"})], "cae.batch_size": [(4, {"train"})],
    "cae.lr": [(0.01, {"train"})],
    # the validation images then chose something: the metrics warn that their thresholds are optimistic
    "cae.early_stopping": [(2, {"train", "metrics"})], "cae.checkpoint": [("best_val", {"train", "metrics"})],
    "cae.in_memory": [(True, set())],
    "scoring.top_k": [(3, {"scores", "bundle"})],
    "scoring.border": [(1, {"scores", "metrics", "plots", "bundle"})],
    "thresholds.alpha": [(2.0, {"metrics"})], "thresholds.percentile": [(95.0, {"metrics"})],
    "thresholds.pixel_fpr": [(0.05, {"metrics"})],
    "thresholds.few_labels": [([0, 2], {"metrics"}), ([], {"metrics"})],
    "thresholds.few_label_draws": [(3, {"metrics"})],
    "metrics.pixel": [(False, {"metrics"})], "metrics.eval_size": [(64, {"metrics"})],
    "metrics.pro_fpr_limit": [(0.2, {"metrics"})],
}
# keys that change what is planned rather than one artifact (tested where that is: test_studies,
# test_ensemble, tests/test_workflow's ensemble edit, test_datasets)
STRUCTURAL = {
    "datasets.*.kind": "another kind of dataset: other jobs (download, generation)",
    "datasets.*.categories": "adds or removes a category's jobs",
    "datasets.*.synthetic.shape": "categories shaped like a benchmark's (their names change)",
    "study.grid": "a study: one experiment per variant", "study.variants": "a study: one experiment per variant",
    "ensemble.members": "an ensemble: the members' models and their fusion",
}


def schema_keys(node: dict | None = None, prefix: str = "") -> list[str]:
    """Every leaf key of the config schema, dotted; a dataset's keys as ``datasets.*.<key>``."""
    node = dfr_config.schema() if node is None else node
    out = []
    for k, sub in node.get("properties", {}).items():
        key = f"{prefix}{k}"
        if k == "datasets" and not prefix:
            out += schema_keys(sub["additionalProperties"], "datasets.*.")
        elif sub.get("properties") and k != "study":
            out += schema_keys(sub, key + ".")
        elif k == "study":
            out += [f"study.{s}" for s in sub["properties"]]
        else:
            out.append(key)
    return out


def closure(direct: set[str]) -> set[str]:
    out, todo = set(), list(direct)
    while todo:
        a = todo.pop()
        if a not in out:
            out.add(a)
            todo += DOWNSTREAM[a]
    return out


def with_key(cfg: dict, key: str, value) -> dict:
    raw = copy.deepcopy(cfg)
    if key.startswith("datasets.*."):
        overrides.set_key(raw["datasets"]["synth"], key.removeprefix("datasets.*."), value, key)
    else:
        overrides.set_key(raw, key, value, key)
    return raw


def signatures(raw: dict, dataset: str = "synth", category: str = "disc") -> dict[str, object]:
    """What each rule records of one category's artifact: its path (the keys of what it is made from) and its
    params, as the rules take them; None for an artifact the config does not make."""
    cfg = dfr_config.validate(raw)
    p = plan.paths(cfg, dataset, category)
    ms = plan.members(cfg)
    return json.loads(json.dumps({
        "synthetic": [p["synthetic"], keys.synthetic_params(cfg, dataset)],
        "index": [p["index"], layout.dataset_root(cfg, dataset), keys.code_version("index")],
        "features": p["features_train"],
        "split": p["split"],
        "pca": [p["pca"], plan.pca_params(cfg, dataset, category)] if keys.uses_pca(cfg) else None,
        "train": [p["model"], keys.model_params(cfg)],
        "maps": [p["maps"], keys.maps_params(cfg)],
        "scores": [p["scores"], keys.scores_params(cfg)],
        "metrics": [p["metrics"], keys.metrics_params(cfg, dataset, ms)],
        "plots": [p["plots"], keys.plots_params(cfg)],
        "bundle": [p["bundle"], keys.bundle_params(cfg, ms)],
        "tables": [layout.table_paths(cfg, dataset)["csv"], layout.reference(cfg, dataset), keys.code_version("tables")],
    }))


def changed(a: dict, b: dict) -> set[str]:
    """Artifacts whose signature differs; one that the config no longer makes (PCA for a fixed d) is not."""
    return {k for k in a if b[k] is not None and a[k] != b[k]}


@pytest.fixture(autouse=True)
def _workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # TINY's weights file and its relative paths
    monkeypatch.setenv("DFR_CACHE_DIR", str(tmp_path / "cache"))
    place_weights(tmp_path)


def test_every_schema_key_has_a_row():
    listed = set(ROWS) | set(STRUCTURAL)
    missing = [k for k in schema_keys() if k not in listed]
    assert not missing, f"schema keys without a row in tests/test_keys.py (say which artifacts each shapes): {missing}"
    assert not listed - set(schema_keys()), f"rows for keys the schema does not have: {sorted(listed - set(schema_keys()))}"


def test_runtime_only_keys_shape_nothing():
    for key in overrides.runtime_only():
        assert all(not shaped for _, shaped in ROWS[key]), key


@pytest.mark.parametrize("key, value, shaped", [(k, v, s) for k, rows in ROWS.items() for v, s in rows],
                         ids=lambda x: x if isinstance(x, str) else None)
def test_a_key_changes_exactly_the_artifacts_it_shapes(key, value, shaped):
    base = signatures(TINY)
    assert overrides.get_or_none(dfr_config.validate(TINY), key.replace("datasets.*.", "datasets.synth.")) != value
    got = changed(base, signatures(with_key(TINY, key, value)))
    assert shaped <= got <= closure(shaped), (
        f"{key}: {value!r} changed {sorted(got)}; it shapes {sorted(shaped)} (and what follows from them: "
        f"{sorted(closure(shaped))})")


@pytest.mark.parametrize("stage, artifact", [
    ("synthetic", "synthetic"), ("index", "index"), ("features", "features"), ("split", "split"), ("pca", "pca"),
    ("maps", "maps"), ("scores", "scores"), ("metrics", "metrics"), ("plots", "plots"),
    ("bundle", "bundle"), ("tables", "tables")])
def test_a_code_version_changes_its_stage_and_what_follows(stage, artifact, monkeypatch):
    base = signatures(TINY)
    owner = keys.CODE_OWNERS[stage]
    bumped = {**keys._module_versions(owner), stage: keys.code_version(stage) + 1}
    real = keys._module_versions
    monkeypatch.setattr(keys, "_module_versions", lambda m: bumped if m == owner else real(m))
    monkeypatch.setattr(plan, "_KEYS", {})  # keys are remembered for the life of a process (one plan)
    got = changed(base, signatures(TINY))
    assert {artifact} <= got <= closure({artifact}), f"{stage}: {sorted(got)}"


def test_a_heads_code_version_changes_its_model_and_what_follows(monkeypatch):
    base = signatures(TINY)
    head = heads.get(TINY.get("model", "cae"))
    monkeypatch.setattr(head, "version", head.version + 1)  # on the instance: the class keeps its own
    monkeypatch.setattr(plan, "_KEYS", {})
    got = changed(base, signatures(TINY))
    assert {"train"} <= got <= closure({"train"}), sorted(got)


def test_every_stage_module_owns_its_code_version():
    import importlib

    for stage, owner in keys.CODE_OWNERS.items():
        assert importlib.import_module(f"dfr.{owner}").CODE_VERSIONS[stage] == keys.code_version(stage)


def test_the_weights_are_keyed_by_their_content(tmp_path):
    base = keys.feature_key(dfr_config.validate(TINY))
    absolute = with_key(TINY, "features.weights", str(tmp_path / "weights" / "lite0.pth"))
    assert keys.feature_key(dfr_config.validate(absolute)) == base  # the same file by another path
    os.utime(tmp_path / "weights" / "lite0.pth", (1, 1))  # touched: the same content
    fileid._SHA256.clear()
    assert keys.feature_key(dfr_config.validate(TINY)) == base
    cache = json.loads((tmp_path / "cache" / "file-sha256.json").read_text())
    assert list(cache) == [str((tmp_path / "weights" / "lite0.pth").resolve())]
    with open(tmp_path / "weights" / "lite0.pth", "ab") as f:  # replaced in place: another file
        f.write(b"\0")
    fileid._SHA256.clear()
    assert keys.feature_key(dfr_config.validate(TINY)) != base
    with pytest.raises(Exception, match="weights file not found"):
        keys.feature_key(dfr_config.validate(with_key(TINY, "features.weights", "nowhere.pth")))


def test_the_hash_of_a_file_is_computed_once(tmp_path, monkeypatch):
    calls = []
    real = fileid._file_sha256
    monkeypatch.setattr(fileid, "_file_sha256", lambda *a: calls.append(a) or real(*a))
    fileid._SHA256.clear()
    for _ in range(3):
        keys.feature_key(dfr_config.validate(TINY))
    assert len(calls) == 1
    # a new process (the next Snakefile parse) reads it from the cache file without reading the weights
    fileid._SHA256.clear()
    monkeypatch.setattr(keys, "open", lambda *a, **k: pytest.fail("the weights were read again"), raising=False)
    keys.feature_key(dfr_config.validate(TINY))
