import copy
import re

import pytest
import yaml

from dfr.planning import keys, plan
from dfr.planning import config as dfr_config
from dfr.io import DFRError
from conftest import ROOT


def _demo():
    return yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())


def test_shipped_configs_are_valid():
    for name in ("config.yaml", "demo.yaml", "bottle.yaml", "study-demo.yaml", "study-beyond.yaml", "rehearsal.yaml",
                 "best.yaml", "fast.yaml", "best-resnet.yaml", "rehearsal-best.yaml", "study-select.yaml",
                 "study-members.yaml", "study-fast.yaml"):
        cfg = dfr_config.load(ROOT / "config" / name)
        assert cfg["scoring"]["top_k"] >= 1
    paper = dfr_config.load(ROOT / "config" / "config.yaml")
    assert len(paper["datasets"]["mvtec_ad"]["categories"]) == 15
    assert len(paper["datasets"]["visa"]["categories"]) == 12
    assert keys.feature_params(paper)["layers"] == ["layer2[-1]", "layer3[-1]"]
    assert paper["cae"] == {"latent_dim": "auto", "normalize": True, "batchnorm": True, "epochs": 50,
                            "batch_size": 16, "lr": 0.001, "early_stopping": 0, "in_memory": "auto",
                            "checkpoint": "last", "kernel": 1, "padding": "reflect", "depthwise": False,
                            "seed": None}


def test_defaults_are_filled():
    cfg = dfr_config.validate({"datasets": {"d": {"kind": "folder", "root": "x", "categories": ["a"]}}})
    assert cfg["features"]["backbone"] == "resnet50"
    assert cfg["data"]["image_size"] == 224
    assert cfg["thresholds"]["alpha"] == 3.0


def test_defaults_are_those_snakemake_utils_validate_sets(tmp_path):
    """dfr.planning.config fills defaults with the jsonschema recipe that snakemake.utils.validate applies, compiled once
    (snakemake's re-reads the schema on each call: 48 calls for study-beyond's variants and members): the two
    give the same config for every shipped one and for its study variants' raw members, on the schema composed of
    schemas/config.schema.yaml and the heads' sections."""
    from snakemake.utils import validate as snakemake_validate

    composed = tmp_path / "config.schema.yaml"
    composed.write_text(yaml.safe_dump(dfr_config.schema(), sort_keys=False))
    for path in sorted((ROOT / "config").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        theirs = copy.deepcopy(raw)
        snakemake_validate(theirs, str(composed), set_default=True)
        assert dfr_config.validate(raw, str(path)) == theirs, path.name
    folder = {"datasets": {"d": {"kind": "folder", "root": "x", "categories": ["a"]}}}
    a = dfr_config.validate(folder)
    a["cae"]["epochs"] = 7  # the defaults are copies, not shared with the next config
    assert dfr_config.validate(folder)["cae"]["epochs"] == 50


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["cae"].update(epochs=0), r"cae.epochs: 0 is less than the minimum of 1"),
    (lambda c: c["cae"].update(latent_dim="big"), r"cae.latent_dim: 'big' is not valid"),
    (lambda c: c["features"].update(backbone="vgg"), r"features.backbone: 'vgg' is not one of"),
    (lambda c: c.update(typo=1), r"Additional properties are not allowed \('typo' was unexpected\)"),
    (lambda c: c["datasets"]["synthetic"].update(categories=["moon"]), r"unknown synthetic categories"),
    (lambda c: c["datasets"]["synthetic"].update(categories=["can"], synthetic={"shape": "mvtec_ad2"}),
     r"datasets.synthetic.synthetic: shape mvtec_ad2 needs layout: mvtec_ad2"),
    (lambda c: c["datasets"].update(m={"kind": "mvtec", "categories": ["bottle", "cat"]}),
     r"datasets.m.categories: \['cat'\] not in mvtec"),
])
def test_invalid_configs_have_readable_messages(edit, message):
    cfg = _demo()
    edit(cfg)
    with pytest.raises(DFRError, match=message):
        dfr_config.validate(cfg, "demo.yaml")


def test_feature_key_depends_only_on_what_shapes_features():
    base = dfr_config.validate(_demo())
    key = keys.feature_key(base)
    for edit in (lambda c: c["cae"].update(epochs=3), lambda c: c["scoring"].update(top_k=3),
                 lambda c: c["features"].update(batch_size=2), lambda c: c.update(experiment="other"),
                 lambda c: c["thresholds"].update(alpha=2.0)):
        cfg = copy.deepcopy(base)
        edit(cfg)
        assert keys.feature_key(cfg) == key
    for edit in (lambda c: c["data"].update(image_size=256), lambda c: c["features"].update(layers=["blocks[2]"]),
                 lambda c: c["features"].update(weights="none"), lambda c: c["data"].update(normalize=False)):
        cfg = copy.deepcopy(base)
        edit(cfg)
        assert keys.feature_key(cfg) != key


@pytest.mark.parametrize("name, variant", [("best.yaml", "best-ens-lite012"), ("fast.yaml", "paper")])
def test_the_recommendations_are_the_study_variants_they_were_chosen_as(name, variant):
    """config/best.yaml and config/fast.yaml make exactly the config/study-select.yaml variants that its selection
    rule chose (docs/recommended.md), and config/study-members.yaml's full ensemble is
    best.yaml's; nothing in them names a category."""
    rec = dfr_config.load(ROOT / "config" / name)
    select = plan.variants(dfr_config.load(ROOT / "config" / "study-select.yaml"))
    chosen = select[f"study-select/{variant}"]
    assert {**plan.key_values(rec), "experiment": None} == {**plan.key_values(chosen), "experiment": None}
    assert rec["scoring"] == chosen["scoring"] and rec["thresholds"] == chosen["thresholds"]
    assert rec["datasets"] == chosen["datasets"]
    members = plan.variants(dfr_config.load(ROOT / "config" / "study-members.yaml"))
    assert members[f"study-members/{variant}"]["ensemble"] == rec["ensemble"]
    text = (ROOT / "config" / name).read_text().split("datasets:")[1].split("data:")[1]
    assert not any(c in text for d in rec["datasets"].values() for c in d["categories"])


def test_study_select_candidates_are_study_beyonds_variants():
    """config/study-select.yaml's candidates are variants of config/study-beyond.yaml: the same names make the
    same artifacts (so one study's models serve the other)."""
    select = plan.variants(dfr_config.load(ROOT / "config" / "study-select.yaml"))
    beyond = plan.variants(dfr_config.load(ROOT / "config" / "study-beyond.yaml"))
    assert len(select) == 23
    for name, cfg in select.items():
        other = beyond[name.replace("study-select/", "study-beyond/")]
        mine, theirs = plan.key_values(cfg), plan.key_values(other)
        assert {**mine, "experiment": None} == {**theirs, "experiment": None}, name
        assert cfg["scoring"] == other["scoring"] and cfg["datasets"] == other["datasets"], name


def test_study_fast_candidates_are_study_selects_variants():
    """config/study-fast.yaml's candidates are study-select's (the same names make the same models and scores)."""
    fast = plan.variants(dfr_config.load(ROOT / "config" / "study-fast.yaml"))
    select = plan.variants(dfr_config.load(ROOT / "config" / "study-select.yaml"))
    assert len(fast) == 15 and "study-fast/paper" in fast
    for name, cfg in fast.items():
        other = select[name.replace("study-fast/", "study-select/")]
        assert {**plan.key_values(cfg), "experiment": None} == {**plan.key_values(other), "experiment": None}, name
        assert cfg["scoring"] == other["scoring"] and cfg["datasets"] == other["datasets"], name


def test_config_readme_documents_every_schema_key():
    """config/README.md's table is the schema's, and every key has a description."""
    from test_keys import schema_keys

    text = (ROOT / "config" / "README.md").read_text()
    assert dfr_config.README_MARK in text
    assert text.split(dfr_config.README_MARK)[1].strip() == dfr_config.readme_table().strip(), (
        "config/README.md is not the schema's: run make config-readme")
    cells = [re.split(r"(?<!\\)\|", line) for line in dfr_config.readme_table().splitlines()[2:]]
    assert all(len(c) == 6 for c in cells)  # | key | type | default | what it does |
    rows = {c[1].strip().strip("`"): c[4].strip() for c in cells}
    for key in schema_keys():
        key = key.replace("datasets.*.", "datasets.<name>.")
        assert rows.get(key), f"{key}: no description in the schema (config/README.md says nothing of it)"


# ---- method presets (config/methods: no data sets) and data configs (config/data), combined on the command line ----

PAIRS = {  # a complete config -> the data configs and the method preset that make it, in command-line order
    "config.yaml": (["mvtec_ad", "visa"], "paper"),
    "fast.yaml": (["shared"], "fast"),
    "best.yaml": (["shared"], "best"),
    "mvtec_ad2.yaml": (["mvtec_ad2"], "paper"),
}


def _combined(data: list[str], method: str) -> dict:
    """The config Snakemake makes of `--configfile config/data/<d>.yaml ... config/methods/<m>.yaml` (each file
    merged into the last, dicts recursively: snakemake.utils.update_config)."""
    from snakemake.utils import update_config

    cfg: dict = {}
    for p in [ROOT / "config" / "data" / f"{d}.yaml" for d in data] + [ROOT / "config" / "methods" / f"{method}.yaml"]:
        update_config(cfg, yaml.safe_load(p.read_text()))
    return cfg


@pytest.mark.parametrize("full", sorted(PAIRS))
def test_a_method_preset_with_data_configs_is_the_complete_config(full):
    data, method = PAIRS[full]
    assert "datasets" not in yaml.safe_load((ROOT / "config" / "methods" / f"{method}.yaml").read_text())
    for d in data:
        assert set(yaml.safe_load((ROOT / "config" / "data" / f"{d}.yaml").read_text())) == {"datasets"}
    want = dfr_config.validate(yaml.safe_load((ROOT / "config" / full).read_text()), full)
    assert dfr_config.validate(_combined(data, method), "combined") == want


def test_every_method_runs_on_every_data_config_and_plans_as_the_complete_config(tmp_path):
    """Each preset validates with each data config; and the fast preset on the shared data plans exactly the jobs
    of config/fast.yaml (same keys, same artifacts), in a dry run of each."""
    import subprocess

    from conftest import SNAKEMAKE

    for m in sorted(p.stem for p in (ROOT / "config" / "methods").glob("*.yaml")):
        for d in sorted(p.stem for p in (ROOT / "config" / "data").glob("*.yaml")):
            dfr_config.validate(_combined([d], m), f"{d} + {m}")
    runs = {}
    for name, files in {"complete": ["config/fast.yaml"],
                        "combined": ["config/data/shared.yaml", "config/methods/fast.yaml"]}.items():
        r = subprocess.run([SNAKEMAKE, "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                            "--configfile", *[str(ROOT / f) for f in files], "--cores", "2"],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        runs[name] = sorted(ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("output:"))
    assert runs["complete"] == runs["combined"] and runs["complete"]
