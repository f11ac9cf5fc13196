"""Studies: variants of a config (names, validation, shared keys), the comparison, the paper side by side."""

import json

import numpy as np
import pandas as pd
import pytest

from dfr.planning import plan
from dfr.planning import config as dfr_config
from dfr.stages import studies, tables
from dfr.io import DFRError

BASE = {"experiment": "st", "datasets": {"s": {"kind": "synthetic", "categories": ["disc"]}},
        "features": {"backbone": "tf_efficientnet_lite0", "layers": ["blocks[2]", "blocks[4]"]}}


def expand(study, **base):
    return plan.variants(dfr_config.validate({**BASE, **base, "study": study}))


def test_one_at_a_time_sweeps_name_variants_by_what_differs_from_the_base():
    v = expand({"grid": [{"cae.latent_dim": ["auto", 16]}, {"scoring.top_k": [5, 10]},
                         {"features.layers": [["blocks[2]", "blocks[4]"], ["blocks[3]", "blocks[4]"]]}]})
    assert sorted(v) == ["st/base", "st/latent_dim-16", "st/layers-blocks3+blocks4", "st/top_k-5"]
    assert v["st/latent_dim-16"]["cae"]["latent_dim"] == 16 and v["st/top_k-5"]["scoring"]["top_k"] == 5
    assert v["st/base"]["study_variant"]["settings"] == {"cae.latent_dim": "auto", "scoring.top_k": 10,
                                                         "features.layers": ["blocks[2]", "blocks[4]"]}
    assert all(c["experiment"] == e for e, c in v.items())


def test_a_grid_is_a_full_product_and_named_variants_join_it():
    v = expand({"grid": {"cae.latent_dim": [8, 16], "scoring.top_k": [1, 10]},
                "variants": {"no_norm": {"cae": {"normalize": False}}}})
    assert sorted(v) == ["st/latent_dim-16", "st/latent_dim-16__top_k-1", "st/latent_dim-8",
                         "st/latent_dim-8__top_k-1", "st/no_norm"]
    assert v["st/no_norm"]["cae"]["normalize"] is False and v["st/no_norm"]["cae"]["latent_dim"] == "auto"


def test_keys_that_end_alike_keep_their_section():
    v = expand({"grid": [{"cae.normalize": [True, False]}, {"data.normalize": [True, False]}]})
    assert sorted(v) == ["st/base", "st/cae.normalize-false", "st/data.normalize-false"]


@pytest.mark.parametrize("study, message", [
    ({"grid": {"cae.latent_dim": [0]}}, r"(?s)study \(grid cae.latent_dim=0\).*cae.latent_dim: 0 is not valid"),
    ({"grid": {"cae.epochs": ["many"]}}, r"cae.epochs: 'many' is not of type 'integer'"),
    ({"grid": {"cae.nope": [1]}}, r"'nope' was unexpected"),
    ({"grid": {"features.batch_size": [4, 8]}}, r"features.batch_size changes only how fast"),
    ({"grid": {"datasets.s.categories": [["disc"]]}}, r"cannot vary 'datasets'"),
    ({"grid": {"scoring.top_k.x": [1]}}, r"scoring.top_k is not a section"),
    ({"variants": {"comparison": {}}}, r"'comparison' is reserved"),
    ({"variants": {}}, r"lists no variants"),
])
def test_bad_variants_fail_naming_the_variant_and_key(study, message):
    with pytest.raises(DFRError, match=message):
        expand(study)


def test_bad_study_structure_is_a_schema_error():
    with pytest.raises(DFRError, match=r"study.grid"):
        dfr_config.validate({**BASE, "study": {"grid": {"cae.latent_dim": 8}}})


def test_variants_share_every_artifact_their_settings_do_not_change():
    v = expand({"grid": [{"scoring.top_k": [1, 10]}, {"cae.latent_dim": ["auto", 8]}, {"features.pool": [3, 5]},
                         {"thresholds.alpha": [3.0, 2.0]}, {"cae.epochs": [50, 10]}]})
    k = {e.split("/")[1]: plan.key_values(c) for e, c in v.items()}
    same = lambda a, b, key: k[a][key] == k[b][key]  # noqa: E731
    assert same("base", "top_k-1", "mkey") and same("base", "alpha-2", "mkey")  # model and maps shared
    assert same("base", "latent_dim-8", "fkey") and not same("base", "latent_dim-8", "mkey")
    assert same("base", "epochs-10", "pkey") and not same("base", "epochs-10", "mkey")  # PCA shared
    assert not same("base", "pool-5", "fkey") and same("base", "pool-5", "skey")
    p = {n: plan.paths(v[f"st/{n}"], "s", "disc") for n in k}
    assert p["base"]["maps"] == p["top_k-1"]["maps"] and p["base"]["scores"] != p["top_k-1"]["scores"]


def test_no_study_is_the_config_itself():
    cfg = dfr_config.validate(BASE)
    assert plan.variants(cfg) == {"st": cfg}


def test_reserved_experiment_names_are_refused():
    with pytest.raises(DFRError, match="experiment: 'models' names a shared folder"):
        dfr_config.validate({**BASE, "experiment": "models"})


def _metrics(cat, auroc, pixel=True):
    m = {"dataset": "s", "category": cat, "image_auroc": auroc,
         "thresholds": {"f1_optimal": {"f1": auroc - 0.1, "threshold": 1.0},
                        "val_mean_std": {"f1": auroc - 0.2, "threshold": 1.0},
                        "val_percentile": {"f1": auroc - 0.3, "threshold": 1.0}}}
    if pixel:
        m["pixel"] = {"auroc": auroc - 0.05, "au_pro": auroc - 0.15}
    return m


def test_comparison_table_best_variant_and_figures(tmp_path):
    cfg = dfr_config.validate({**BASE, "datasets": {"s": {"kind": "synthetic", "categories": ["disc", "grain"]}},
                               "study": {"grid": [{"cae.latent_dim": ["auto", 8, 32]}, {"scoring.top_k": [1, 10]},
                                                  {"features.layers": [["blocks[2]", "blocks[4]"],
                                                                       ["blocks[3]", "blocks[4]"]]}]}})
    v = plan.variants(cfg)
    man = plan.Plan(cfg).manifest()
    auroc = {"base": 0.8, "latent_dim-8": 0.9, "latent_dim-32": 0.7, "top_k-1": 0.85, "layers-blocks3+blocks4": 0.6}
    for e, c in v.items():
        for cat, shift in (("disc", 0.0), ("grain", -0.1)):
            p = tmp_path / plan.paths(c, "s", cat)["metrics"]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(_metrics(cat, auroc[e.split("/")[1]] + shift)))
    out = tmp_path / "cmp"
    rows = studies.compare(man, out / "s.csv", out / "s.md", out / "best.json", out / "plots", workdir=tmp_path)
    assert len(rows) == 10 and set(rows.columns) >= {"cae.latent_dim", "scoring.top_k", "image_auroc", "au_pro",
                                                    "f1_oracle", "f1_mean_std", "f1_percentile", "fit_s"}
    csv = pd.read_csv(out / "s.csv")
    assert csv[csv.variant == "latent_dim-8"].image_auroc.tolist() == pytest.approx([0.9, 0.8])
    best = json.loads((out / "best.json").read_text())
    assert best["reference"] == "base" and "qualifies" in best["rule"]
    b = best["best"]
    assert b["variant"] == "latent_dim-8" and b["test_chosen"]["means"]["image_auroc"] == pytest.approx(0.85)
    # one data set: its categories are left out in turn; each fold chooses latent_dim-8 on the other category
    assert b["nested"]["left_out"] == "category" and b["nested"]["chosen"] == {"disc": "latent_dim-8",
                                                                             "grain": "latent_dim-8"}
    assert b["nested"]["worst"]["au_pro"]["vs_reference"] == pytest.approx(0.1)
    assert best["fast"]["among"] == [] and best["fast"]["variant"] == "base"  # no speeds recorded: the reference
    md = (out / "s.md").read_text()
    assert "**latent_dim-8**" in md and "test-chosen" in md and "nested (leave one category out)" in md
    assert "### Cost against quality" in md and "| grain |" in md
    pngs = sorted(x.name for x in (out / "plots").glob("*.png"))
    assert pngs == ["summary.png", "sweep_cae.latent_dim.png", "sweep_features.layers.png", "sweep_scoring.top_k.png"]
    assert man["base"]["features.layers"] == "blocks2+blocks4"  # as the table shows it
    assert all((out / "plots" / x).stat().st_size > 5000 for x in pngs)


def test_the_paper_side_by_side(tmp_path):
    files = []
    for cat, auroc in (("bottle", 0.98), ("screw", 0.90)):
        m = _metrics(cat, auroc)
        m["thresholds"]["f1_optimal"].update(precision=0.9, recall=0.9, specificity=0.8, balanced_accuracy=0.85,
                                             error_pct=10.0)
        for k in ("val_mean_std", "val_percentile"):
            m["thresholds"][k].update(precision=0.9, recall=0.9, specificity=0.8, balanced_accuracy=0.85,
                                      error_pct=10.0)
        (tmp_path / f"{cat}.json").write_text(json.dumps(m))
        files.append(tmp_path / f"{cat}.json")
    tables.write(files, "mvtec_ad", tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "v.csv", "mvtec_ad")
    t = pd.read_csv(tmp_path / "t.csv").set_index("Category")
    assert t.at["bottle", "AUROC (paper)"] == 1.0 and t.at["screw", "AUROC (paper)"] == 0.86
    assert t.at["screw", "ΔAUROC"] == pytest.approx(0.04)
    assert t.at["Mean", "AUROC (paper)"] == pytest.approx(0.93)  # the paper's mean over the same categories
    assert t.at["Mean", "ΔError%"] == pytest.approx(10.0 - (0.0 + 19.38) / 2)
    md = (tmp_path / "t.md").read_text()
    assert "next to the paper's MVTec AD (Table 1)" in md and "| screw | 0.900 | 0.860 | +0.040 |" in md
    paper = tables.paper("visa")
    assert len(paper) == 12 and paper.auroc.mean() == pytest.approx(0.918, abs=5e-4)
    assert len(tables.paper("mvtec_ad")) == 15 and tables.paper("mvtec_ad").auroc.mean() == pytest.approx(0.972, abs=5e-4)
    tables.write(files, "x", tmp_path / "t2.csv", tmp_path / "t2.md", tmp_path / "v2.csv")
    assert "paper" not in (tmp_path / "t2.md").read_text() and "AUROC (paper)" not in pd.read_csv(tmp_path / "t2.csv")
    assert not np.isnan(t.at["Mean", "ΔF1"])


def test_an_ensemble_less_one_member_is_found_as_that_members_ablation():
    a, b, c = {"cae.kernel": 3}, {"model": "gaussian"}, {"model": "gaussian", "data.image_size": 224}
    man = {"variants": [{"name": n, "settings": s} for n, s in {
        "full": {"ensemble.members": [a, b, c], "scoring.top_k": 40},
        "no-c": {"ensemble.members": [a, b], "scoring.top_k": 40},
        "no-a": {"ensemble.members": [b, c], "scoring.top_k": 40},
        "no-a-k10": {"ensemble.members": [b, c], "scoring.top_k": 10},  # another setting differs: no pair
        "pair": {"ensemble.members": [a, b], "scoring.top_k": 40},      # same as no-c: found too
        "single": {"ensemble.members": [], "scoring.top_k": 40},
        "other": {"ensemble.members": [a, {"model": "gaussian", "gaussian.channels": 9}], "scoring.top_k": 40},
    }.items()]}
    pairs = studies.ablations(man)
    assert pairs == [("full", "no-c", "model: gaussian, data.image_size: 224"), ("full", "no-a", "cae.kernel: 3"),
                     ("full", "pair", "model: gaussian, data.image_size: 224")]
    summary = pd.DataFrame({"variant": ["full", "no-c", "no-a", "pair"], "image_auroc": [0.9, 0.8, 0.95, 0.8],
                            "pixel_auroc": [0.9] * 4, "au_pro": [0.7, 0.6, np.nan, 0.6],
                            "score_rel": [0.5, 1.0, 0.8, 1.0]})
    lines = studies._ablation_lines(summary, pairs[:2], {"image_auroc": "I", "pixel_auroc": "P", "au_pro": "A"})
    assert lines[-2] == "| full | model: gaussian, data.image_size: 224 | no-c | +0.100 | +0.000 | +0.100 | 0.50× |"
    assert lines[-1] == "| full | cae.kernel: 3 | no-a | -0.050 | +0.000 | n/a | 0.62× |"
    assert studies._ablation_lines(summary, [], {}) == []
    # members read as the table's other settings do
    assert studies._member({"cae.depthwise": True, "cae.kernel": 3}) == "cae.depthwise: true, cae.kernel: 3"
    assert studies._member({}) == "the config itself"


def test_the_study_timing_interleaves_its_variants_and_keeps_each_ones_best_round(monkeypatch, tmp_path):
    """Round by round, every variant once in turn (a drifting machine speeds or slows all alike); each keeps
    its best round."""
    from dfr.stages import timing

    calls = []
    speeds = iter([10.0, 20.0, 30.0, 12.0, 18.0, 33.0])  # round 1: a, b, c; round 2: a, b, c

    def fake(variants, images, batch, repeats, device):
        calls.append((variants[0]["name"], repeats))
        v = next(speeds)
        return [{"variant": variants[0]["name"], "images": len(images), "batch": batch, "repeats": repeats,
                 "score_ips": v, "backbone_ips": 2 * v, "decode_ips": 100.0}]

    monkeypatch.setattr(timing, "time_variants", fake)
    monkeypatch.setattr(timing, "assemble", lambda *a, **k: {})
    monkeypatch.setattr(timing, "test_images", lambda index, n: ["x.png"] * n)
    t = {"features": [], "models": [], "top_k": 3, "border": 0, "index": "i.csv", "dataset": "d", "category": "c"}
    manifest = {"variants": [{"name": n, "timing": [t]} for n in "abc"]}
    df = timing.study(manifest, tmp_path / "timing.csv", {"images": 4, "batch": 2, "repeats": 2})
    assert calls == [("a", 1), ("b", 1), ("c", 1)] * 2
    assert df.set_index("variant").score_ips.to_dict() == {"a": 12.0, "b": 20.0, "c": 33.0}
    assert (df.repeats == 2).all() and (df.dataset == "d").all()
