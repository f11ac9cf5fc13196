"""Each head beyond the paper through the pipeline on TINY's cached features: train, maps, scores, metrics and
the bundle through Snakemake; dfr predict gives scores.csv's scores and dfr export the bundle's."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, planned_jobs, snakemake, tiny_paths

HEADS = {
    # PatchCore's image score, the map's maximum
    "memory_bank": ({"memory_bank": {"coreset": 0.1}}, {"top_k": 1}, "/mb0.1-"),
    "flow": ({"flow": {"channels": 32, "hidden": 32, "epochs": 3}}, {}, "/flow-b4-e3-"),
}


@pytest.mark.slow
@pytest.mark.parametrize("head", sorted(HEADS))
def test_a_head_through_the_pipeline_bundle_predict_and_export(head, tiny_copy, tmp_path):
    from sklearn.metrics import roc_auc_score

    from dfr.stages import export, predict

    section, scoring, key = HEADS[head]
    cfg = {**TINY, "experiment": f"tiny-{head}", "model": head, **section, "scoring": {**TINY["scoring"], **scoring}}
    target = f"results/tiny-{head}/synth/disc/bundle.pt"
    r = snakemake(tiny_copy, cfg, target)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = planned_jobs(r.stderr)  # what the run made (its job stats)
    assert jobs["train"] == 1 and "features" not in jobs and "pca" not in jobs  # the cached f(x) is TINY's
    p = tiny_paths(tiny_copy, cfg, "synth", "disc")
    assert key in str(p["model"]) and json.loads(Path(p["model_info"]).read_text())["kind"] == head
    metrics = json.loads(Path(p["metrics"]).read_text())
    scores = pd.read_csv(p["scores"])
    test = scores[scores.split == "test"]
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(test.label, test.score), abs=1e-12)
    paths = [str(tiny_copy / q) if not os.path.isabs(q) else q for q in test.path]
    df = predict.predict(p["bundle"], paths, tmp_path / "pred", device="cpu", batch_size=8, heatmaps=False)
    np.testing.assert_allclose(df.set_index("path").score[paths].to_numpy(), test.score.to_numpy(), rtol=1e-4)
    pr = predict.Predictor(predict.load_bundle(p["bundle"]), "cpu")
    xs = tuple(torch.stack(t) for t in zip(*[pr.preprocess(predict.load_image(q)) for q in paths[:5]]))
    got = pr.maps(xs)
    export.export(p["bundle"], tmp_path / "head.ts")  # traced on one image, run on five
    graph, _ = export.load(tmp_path / "head.ts")
    with torch.no_grad():
        a, s = graph(*xs)
    np.testing.assert_allclose(a.numpy(), got, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.numpy(), pr.scores(got), rtol=1e-4)
