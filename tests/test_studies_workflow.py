"""A study through Snakemake for real: shared artifacts, incremental plans when a grid grows, the HTML report
opened in a real headless browser."""

import json
import os
import shutil
import subprocess
import time

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from dfr.stages import studies
from test_workflow import TINY, planned_jobs, snakemake

pytestmark = pytest.mark.slow

STUDY = {**TINY, "experiment": "tst",
         "study": {"grid": [{"scoring.top_k": [5, 3]}, {"cae.latent_dim": ["auto", 4]}]}}


def grow(sweep: int, key: str, values: list) -> dict:
    """The study with one more sweep, or more values in one."""
    grids = [dict(g) for g in STUDY["study"]["grid"]]
    if sweep < len(grids):
        grids[sweep][key] = values
    else:
        grids.append({key: values})
    return {**STUDY, "study": {"grid": grids}}


def test_a_fresh_study_plans_each_shared_artifact_once(tmp_path):
    r = snakemake(tmp_path, STUDY, "-n", "--quiet", "rules")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = planned_jobs(r.stdout + r.stderr)
    # 3 variants (base, top_k-3, latent_dim-4) x 2 categories; one feature setting, two models
    assert jobs["features"] == 4 and jobs["split"] == 2 and jobs["pca"] == 2
    assert jobs["train"] == 4 and jobs["maps"] == 4  # base and top_k-3 share their models and maps
    assert jobs["scores"] == 6 and jobs["metrics"] == 6 and jobs["plots"] == 6 and jobs["tables"] == 3
    assert jobs["study"] == 1 and "bundle" not in jobs


def test_the_gaussian_reference_and_an_ensemble_share_the_features(tmp_path):
    cfg = {**STUDY, "study": {**STUDY["study"], "variants": {
        "padim": {"model": "gaussian"},
        "ens": {"ensemble.members": [{}, {"cae.seed": 1}]},  # the base's model and one more seed
    }}}
    r = snakemake(tmp_path, cfg, "-n", "--quiet", "rules")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = planned_jobs(r.stdout + r.stderr)
    assert jobs["features"] == 4 and jobs["pca"] == 2  # nothing more for the reference model or the ensemble
    # base, latent_dim-4, padim, and the ensemble's second member, per category; its first is the base's
    assert jobs["train"] == 8 and jobs["maps"] == 8 and jobs["ensemble"] == 2 and jobs["scores"] == 10


@pytest.fixture(scope="module")
def study_run(tiny_run, tmp_path_factory):
    """The study in a copy of the session's tiny run: its base variant is TINY, so only the other variant's
    models and every variant's scores, metrics and tables, and the comparison, are made (not the variants'
    per-category plots, which the tiny run covers: ``study_run_full`` makes them)."""
    from dfr.planning import layout

    wd = tmp_path_factory.mktemp("study") / "run"
    shutil.copytree(tiny_run, wd, symlinks=True)
    t0 = time.perf_counter()
    tables = [f"results/tst/{v}/tables/synth.md" for v in ("base", "top_k-3", "latent_dim-4")]
    comparison = [f"results/tst/{layout.COMPARISON}/{f}" for f in ("study.csv", "study.md", "best.json", "plots")]
    r = snakemake(wd, STUDY, *tables, *comparison)
    assert r.returncode == 0, r.stderr[-4000:]
    print(f"tiny study: {time.perf_counter() - t0:.0f} s")
    return wd


@pytest.fixture(scope="module")
def study_run_full(study_run):
    """The study run with everything its default target makes (the variants' plots too)."""
    r = snakemake(study_run, STUDY)
    assert r.returncode == 0, r.stderr[-4000:]
    return study_run


def test_study_outputs(study_run):
    c = study_run / "results" / "tst" / "comparison"
    rows = pd.read_csv(c / "study.csv")
    assert sorted(set(rows.variant)) == ["base", "latent_dim-4", "top_k-3"]
    assert len(rows) == 6 and rows.image_auroc.between(0, 1).all() and rows.au_pro.between(0, 1).all()
    assert (rows[rows.variant == "latent_dim-4"].latent_d == 4).all()
    assert (rows.fit_s > 0).all() and (rows.score_s > 0).all() and (rows.cae_params > 0).all()
    for cat, g in rows.groupby("category"):  # the images counted are the category's, from its index
        split = pd.read_csv(study_run / "results" / "prepared" / "synth" / cat / "index.csv").split
        assert (g.n_fit == (split == "train").sum()).all() and (g.n_score == (split == "test").sum()).all()
    # top_k-3 reads the base's model and maps: the same d, a different score
    base, k3 = (rows[rows.variant == v].set_index("category") for v in ("base", "top_k-3"))
    assert (base.latent_d == k3.latent_d).all() and (base.fit_s == k3.fit_s).all()
    md = (c / "study.md").read_text()
    assert "fit speed vs base" in md and "| 1.00× | 1.00× |" in md  # the costs relative to the base config
    # the score speeds: every variant timed in one process on the first category's first test images, the
    # machine named; the jobs' wall times kept beside them as cost records
    timing = pd.read_csv(c / "timing.csv")
    assert sorted(timing.variant) == ["base", "latent_dim-4", "top_k-3"] and set(timing.category) == {"disc"}
    assert (timing.images == min(16, int(rows.n_score[rows.category == "disc"].iloc[0]))).all()
    assert (timing.batch == 8).all() and timing.threads.nunique() == 1 and timing.device.eq("cpu").all()
    summary = studies.summarise(rows, [], "base", studies.timed_speeds(c / "timing.csv"))
    assert summary.set_index("variant").score_ips.to_dict() == pytest.approx(
        timing.set_index("variant").score_ips.to_dict())
    assert "score img/s (timed)" in md and "score img/s (jobs' wall)" in md
    best = json.loads((c / "best.json").read_text())
    for name in ("best", "fast"):  # each with the test-chosen and the nested (label-free) figure
        assert best[name]["variant"] in set(rows.variant) and "optimistic" in best[name]["test_chosen"]["chosen_on"]
        assert set(best[name]["nested"]["chosen"]) == set(rows.category)  # one data set: categories left out
    assert "### Recommendations: the variant chosen by a label-free rule" in md and "### Cost against quality" in md
    assert "It does not choose the candidates, nor the settings they share" in md
    assert {p.name for p in (c / "plots").glob("*.png")} == {"summary.png", "sweep_scoring.top_k.png",
                                                             "sweep_cae.latent_dim.png"}
    for v in ("base", "latent_dim-4", "top_k-3"):
        assert (study_run / "results" / "tst" / v / "tables" / "synth.md").is_file()


@pytest.mark.extended
def test_growing_a_grid_plans_only_the_new_variants_jobs(study_run_full):
    wd = study_run_full
    assert planned_jobs(snakemake(wd, STUDY, "-n").stdout) == {}
    # the timing reruns with the manifest: every variant timed again, in one process
    per_variant = {"scores": 2, "metrics": 2, "plots": 2, "tables": 1, "study_manifest": 1, "study_timing": 1,
                   "study": 1}

    jobs = planned_jobs(snakemake(wd, grow(0, "scoring.top_k", [5, 3, 7]), "-n").stdout)
    assert jobs == per_variant  # a top-k: no training, no maps, no features

    jobs = planned_jobs(snakemake(wd, grow(1, "cae.latent_dim", ["auto", 4, 8]), "-n").stdout)
    assert jobs == {**per_variant, "train": 2, "maps": 2}  # a latent size: its models, nothing upstream

    jobs = planned_jobs(snakemake(wd, grow(2, "features.pool", [3, 5]), "-n").stdout)
    assert jobs == {**per_variant, "features": 4, "pca": 2, "train": 2, "maps": 2}  # a feature setting

    jobs = planned_jobs(snakemake(wd, grow(2, "thresholds.alpha", [3.0, 2.0]), "-n").stdout)
    assert jobs == per_variant  # a threshold: new scores and metrics only


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

# Walks the report as a reader would: each category of the menu, each of its subcategories, and writes what
# the navigation panel then shows (the listed results) into the page, for --dump-dom to return.
WALK = """<script>
window.addEventListener('load', async () => {
  const wait = () => new Promise(r => setTimeout(r, 100));
  const out = [];
  await wait();
  out.push('MENU ' + document.querySelector('nav').innerText);
  for (const cat of Object.keys(categories)) {
    for (const sub of Object.keys(categories[cat])) {
      app.setView({navbarMode: 'menu'}); await wait();
      app.setView({navbarMode: 'subcategory', category: cat, subcategory: sub}); await wait();
      out.push('VIEW ' + cat + ' | ' + sub + '\\n' + document.querySelector('nav').innerText);
    }
  }
  const pre = document.createElement('pre'); pre.id = 'dfr-walk'; pre.textContent = out.join('\\n');
  document.body.appendChild(pre);
});
</script>"""


@pytest.mark.extended
def test_html_report_renders_every_category_and_figure(study_run_full, tmp_path):
    if not BROWSER:
        if os.environ.get("CI"):
            pytest.fail("no chromium: .ci/run installs Debian's")
        pytest.skip("no chromium (apt-get install chromium)")
    wd = study_run_full
    r = snakemake(wd, STUDY, "--report", "report.html")
    assert r.returncode == 0, r.stderr[-3000:]
    html = (wd / "report.html").read_text()
    assert len(html) > 100_000 and "Duplicate explicit target" not in html
    walked = tmp_path / "walked.html"
    i = html.rfind("</body>")
    walked.write_text(html[:i] + WALK + html[i:])
    dom = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=60000",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", walked.as_uri()],
                         capture_output=True, text=True, timeout=300).stdout
    assert 'id="dfr-walk"' in dom, dom[-2000:]
    walk = dom.split('id="dfr-walk">', 1)[1].split("</pre>", 1)[0]
    menu, *views = walk.split("VIEW ")
    for cat in ("Study", "Tables", "synth/disc", "synth/grain"):
        assert cat in menu, f"{cat!r} is not in the report's menu: {menu}"
    views = {v.split("\n", 1)[0]: v for v in views}
    figures = ["confusion_matrix", "heatmaps_least", "heatmaps_most", "loss", "pro_curve", "roc", "score_histogram"]
    for cat in ("disc", "grain"):
        for v in ("base", "latent_dim-4", "top_k-3"):
            listed = views[f"synth/{cat} | tst/{v}"]
            for f in figures:
                assert f"tst/{v}\t{f}" in listed, f"{f} of {cat} ({v}) is not listed: {listed}"
    study = views["Study | Other"]
    for f in ("summary", "sweep_cae.latent_dim", "sweep_scoring.top_k", "table"):
        assert f in study, study
    for v in ("base", "latent_dim-4", "top_k-3"):
        assert "image and pixel metrics" in views[f"Tables | tst/{v}"]


@pytest.mark.extended
def test_a_large_studys_manifest_travels_in_a_file(tmp_path):
    """config/study-select.yaml (15 variants x 15 categories): its manifest is longer than one command-line
    argument may be on Linux (128 KiB, where `study` once failed with 'Argument list too long'), so the
    study_manifest rule writes it to a file and the study's command names that file."""
    from dfr.planning import config as dfr_config
    from dfr.planning import plan

    cfg = yaml.safe_load((ROOT / "config" / "study-select.yaml").read_text())
    for ds in cfg["datasets"].values():  # the offline data, wherever the test runs
        if "root" in ds:
            ds["root"] = str((ROOT / ds["root"]).resolve())
    target = "results/study-select/comparison/manifest.json"
    r = snakemake(tmp_path, cfg, target)  # a local job with no inputs: it runs for real
    assert r.returncode == 0, r.stderr[-3000:]
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())  # as Snakemake read it (keys sorted)
    manifest = plan.Plan(dfr_config.validate(written)).manifest()
    assert len(json.dumps(manifest)) > 128 * 1024
    assert json.loads((tmp_path / target).read_text()) == manifest
    r = snakemake(tmp_path, cfg, "-n", "-p", "results/study-select/comparison/study.csv")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    study = next(line for line in out.splitlines() if "python -m dfr study " in line)
    assert f"--manifest {target}" in study and len(study) < 4096
    assert max(map(len, out.splitlines())) < 128 * 1024  # no job's command has a longer argument
