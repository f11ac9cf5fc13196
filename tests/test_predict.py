"""The model bundle and dfr predict, on a small category with a random ResNet18 (fast; the workflow test
checks the same parity on a bundle the pipeline wrote)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dfr.heads.cae import model as cae

from dfr.stages import data, features, predict, scoring

from dfr import heads
from dfr.io import DFRError

FPARAMS = {"backbone": "resnet18", "weights": "none", "layers": ["layer2[-1]", "layer3[-1]"], "pool": 3,
           "image_size": 64, "normalize": True, "dtype": "float16"}


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    d = tmp_path_factory.mktemp("pred")
    idx = d / "index.csv"
    data.write_index(data.index_category(synth_root, "disc"), idx)
    for split in ("train", "test"):
        features.extract(idx, split, d / f"{split}.h5", {**FPARAMS, "batch_size": 4, "device": "cpu"})
    split = data.write_split(idx, d / "split.json", 0.25, 0)
    cae.train(d / "train.h5", d / "split.json", d / "model.pt", d / "h.csv",
              {"latent_dim": 8, "normalize": True, "epochs": 2, "batch_size": 4, "lr": 1e-3, "seed": 0,
               "device": "cpu"})
    scoring.anomaly_maps(d / "model.pt", d / "train.h5", d / "test.h5", d / "split.json", d / "maps.h5",
                         {"device": "cpu", "batch_size": 4})
    scoring.image_scores(d / "maps.h5", d / "scores.csv", 5)
    (d / "metrics.json").write_text(json.dumps({
        "dataset": "s", "category": "disc", "pixel": {"t_pixel": 0.5},
        "thresholds": {"f1_optimal": {"threshold": 1.0, "oracle": True},
                       "val_mean_std": {"threshold": 2.0, "oracle": False}}}))
    predict.write_bundle([d / "model.pt"], d / "metrics.json", d / "bundle.pt", {"features": [FPARAMS], "top_k": 5})
    assert split["val"]
    return d


def test_predict_scores_equal_the_pipelines(trained, synth_root, tmp_path):
    sc = pd.read_csv(trained / "scores.csv")
    test = sc[sc.split == "test"]
    df = predict.predict(trained / "bundle.pt", [str(synth_root / "disc" / "test")], tmp_path / "out",
                         threshold="f1_optimal", device="cpu", batch_size=3, num_workers=1)  # a loader worker
    got = df.set_index("path").score
    np.testing.assert_allclose(got[test.path].to_numpy(), test.score.to_numpy(), rtol=1e-5)
    assert (df.anomalous == (df.score >= 1.0)).all() and (df.threshold == 1.0).all()
    assert len(list((tmp_path / "out" / "heatmaps").glob("*.png"))) == len(df) == len(test)
    assert len(list((tmp_path / "out" / "masks").glob("*_mask.png"))) == len(df)
    j = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert j["threshold"] == {"name": "f1_optimal", "value": 1.0, "oracle": True} and j["images_per_s"] > 0


def test_predict_with_a_border_equals_the_pipelines(trained, synth_root, tmp_path):
    """scoring.border (beyond the paper): the bundle carries it, and dfr predict scores as the pipeline does."""
    scoring.image_scores(trained / "maps.h5", tmp_path / "s.csv", 5, border=1)
    predict.write_bundle([trained / "model.pt"], trained / "metrics.json", tmp_path / "b.pt",
                         {"features": [FPARAMS], "top_k": 5, "border": 1})
    sc = pd.read_csv(tmp_path / "s.csv")
    test = sc[sc.split == "test"]
    df = predict.predict(tmp_path / "b.pt", [str(synth_root / "disc" / "test")], tmp_path / "out",
                         threshold="f1_optimal", device="cpu", heatmaps=False)
    np.testing.assert_allclose(df.set_index("path").score[test.path].to_numpy(), test.score.to_numpy(), rtol=1e-5)
    plain = pd.read_csv(trained / "scores.csv")
    assert not np.allclose(plain[plain.split == "test"].score.to_numpy(), test.score.to_numpy())


def test_the_gaussian_reference_through_maps_scores_bundle_and_predict(trained, synth_root, tmp_path):
    """model: gaussian (beyond the paper) takes the pipeline's own maps, scores, bundle and predict stages."""
    d = trained
    heads.fit(d / "train.h5", d / "split.json", tmp_path / "g.pt", tmp_path / "g.csv",
              {"kind": "gaussian", "channels": 50, "shrinkage": 0.01, "seed": 0})
    scoring.anomaly_maps(tmp_path / "g.pt", d / "train.h5", d / "test.h5", d / "split.json", tmp_path / "m.h5",
                         {"device": "cpu", "batch_size": 4})
    sc = scoring.image_scores(tmp_path / "m.h5", tmp_path / "s.csv", 5)
    test = sc[sc.split == "test"]
    assert (test.score > 0).all()
    predict.write_bundle([tmp_path / "g.pt"], d / "metrics.json", tmp_path / "b.pt", {"features": [FPARAMS], "top_k": 5})
    df = predict.predict(tmp_path / "b.pt", [str(synth_root / "disc" / "test")], tmp_path / "out",
                         threshold="f1_optimal", device="cpu", heatmaps=False)
    np.testing.assert_allclose(df.set_index("path").score[test.path].to_numpy(), test.score.to_numpy(), rtol=1e-4)


def test_inputs_files_folders_globs_and_unreadable_images(trained, synth_root, tmp_path):
    d = synth_root / "disc" / "test"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    paths = predict.image_paths([str(d / "good" / "000.png"), str(d / "scratch"), str(d / "stain" / "*.png"),
                                 str(bad)])
    assert [p.name for p in paths] == ["000.png", "000.png", "001.png", "000.png", "001.png", "bad.png"]
    df = predict.predict(trained / "bundle.pt", [str(p) for p in paths], tmp_path / "o", device="cpu",
                         heatmaps=False)
    assert len(df) == 6 and df.error.iloc[-1].startswith(str(bad)) and np.isnan(df.score.iloc[-1])
    assert (df.error.iloc[:-1] == "").all() and not (tmp_path / "o" / "heatmaps").exists()
    with pytest.raises(DFRError, match=r"none/\*\.png: the pattern matches no file"):
        predict.image_paths([str(tmp_path / "none" / "*.png")])
    with pytest.raises(DFRError, match=r"nonexistent\.png: no such file or folder"):
        predict.image_paths([str(d / "good" / "000.png"), str(tmp_path / "nonexistent.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DFRError, match="empty: a folder with no images"):
        predict.image_paths([str(tmp_path / "empty")])


def test_predict_exit_codes(trained, synth_root, tmp_path, capsys):
    """0 every image scored, 1 some could not be read (the rest scored), 2 nothing scored (documented in
    dfr predict --help); no traceback."""
    from dfr import cli

    good = str(synth_root / "disc" / "test" / "good" / "000.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")

    def run(*images):
        code = cli.main(["predict", str(trained / "bundle.pt"), *images, "--out", str(tmp_path / "o"),
                         "--device", "cpu", "--no-images"])
        out = capsys.readouterr()
        return code, out.out + out.err

    assert run(good)[0] == 0
    code, out = run(good, str(bad))
    assert code == 1 and "1 images scored" in out and "1 skipped" in out
    code, out = run(str(tmp_path / "nonexistent.png"))
    assert code == 2 and "nonexistent.png: no such file or folder" in out and "Traceback" not in out
    code, out = run(str(bad))
    assert code == 2 and "nothing was scored" in out and "Traceback" not in out


def test_bundle_errors(trained, tmp_path):
    with pytest.raises(DFRError, match="no threshold 'val_percentile'"):
        predict.predict(trained / "bundle.pt", [str(tmp_path)], tmp_path, threshold="val_percentile")
    b = torch.load(trained / "bundle.pt", weights_only=True)
    assert b["feature_sets"] == [{"features": FPARAMS, "weights_file": None}] and b["fusion"] is None
    assert len(b["members"]) == 1 and b["scoring"] == {"top_k": 5, "border": 0} and b["t_pixel"] == 0.5
    (tmp_path / "cut.pt").write_bytes((trained / "bundle.pt").read_bytes()[:1000])
    with pytest.raises(DFRError, match=r"cut\.pt: not a readable bundle, truncated or corrupt"):
        predict.load_bundle(tmp_path / "cut.pt")


class _Payload:
    """A pickle that runs code when loaded: it would write the file it names."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


def test_model_files_that_would_run_code_are_refused(trained, tmp_path):
    """Bundles and models are loaded with weights_only: a pickle that would call os.system is refused (its
    payload never runs) with a message that names the file."""
    ran = tmp_path / "payload-ran"
    good = torch.load(trained / "bundle.pt", weights_only=True)  # what the workflow writes loads safely
    torch.save({**good, "evil": _Payload(ran)}, tmp_path / "bundle.pt")
    with pytest.raises(DFRError, match=r"bundle\.pt: refused: it holds objects other than tensors and plain data"):
        predict.load_bundle(tmp_path / "bundle.pt")
    ckpt = torch.load(trained / "model.pt", weights_only=True)
    torch.save({**ckpt, "evil": _Payload(ran)}, tmp_path / "model.pt")
    with pytest.raises(DFRError, match=r"model\.pt: refused: it holds objects other than tensors and plain data"):
        heads.load(tmp_path / "model.pt")
    with pytest.raises(DFRError, match="refused"):
        predict.write_bundle([tmp_path / "model.pt"], trained / "metrics.json", tmp_path / "b2.pt",
                             {"features": [FPARAMS], "top_k": 5})
    assert not ran.exists()


def test_an_exported_graph_gives_the_bundles_maps_and_scores(trained, synth_root, tmp_path):
    """dfr export: the bundle as one TorchScript graph (backbone through A(x) and s(x)) with its dfr.json."""
    from dfr import cli
    from dfr.stages import export

    assert cli.main(["export", str(trained / "bundle.pt"), "--out", str(tmp_path / "m.ts")]) == 0
    graph, meta = export.load(tmp_path / "m.ts")
    assert meta["inputs"] == [{"image_size": FPARAMS["image_size"], "normalize": FPARAMS["normalize"]}]
    assert meta["thresholds"]["f1_optimal"]["oracle"] is True and meta["scoring"]["top_k"] == 5
    pr = predict.Predictor(predict.load_bundle(trained / "bundle.pt"), "cpu")
    paths = predict.image_paths([str(synth_root / "disc" / "test")])[:5]
    (x,) = (torch.stack(t) for t in zip(*[pr.preprocess(predict.load_image(p)) for p in paths]))
    want_a = pr.maps((x,))
    with torch.no_grad():
        a, s = graph(x)  # traced on one image, run on five
    np.testing.assert_allclose(a.numpy(), want_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.numpy(), pr.scores(want_a), rtol=1e-5)
    (tmp_path / "bad.ts").write_bytes(b"not an archive")
    with pytest.raises(DFRError, match=r"bad\.ts: not a readable exported DFR graph"):
        export.load(tmp_path / "bad.ts")


def test_dfr_timing_times_bundles_warm_on_the_same_images(trained, synth_root, tmp_path, capsys):
    """dfr timing: each bundle in one process on the same decoded images; the machine and threads recorded; the
    backbones alone timed beside the whole (the floor a head on their features pays)."""
    from dfr import cli

    out = tmp_path / "timing.json"
    code = cli.main(["timing", "--bundle", str(trained / "bundle.pt"), str(trained / "bundle.pt"), "--images",
                     str(synth_root / "disc" / "test"), "--out", str(out), "--device", "cpu",
                     "--params", json.dumps({"batch": 2, "repeats": 2})])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    n = len(list((synth_root / "disc" / "test").rglob("*.png")))
    assert len(rows) == 2 and all(r["images"] == n and r["batch"] == 2 and r["repeats"] == 2 for r in rows)
    assert all(r["device"] == "cpu" and r["threads"] == torch.get_num_threads() and r["cpu"] for r in rows)
    assert all(r["score_ips"] > 0 and r["backbone_ips"] > 0 and r["decode_ips"] > 0 for r in rows)
    assert f"{n} images, {torch.get_num_threads()} threads, cpu" in capsys.readouterr().out


def test_a_bundle_carries_the_few_label_thresholds_and_predict_uses_them(trained, synth_root, tmp_path):
    m = json.loads((trained / "metrics.json").read_text())
    m["few_label"] = {"k": {"0": {"k": 0, "applicable": True, "threshold": 2.0},
                            "1": {"k": 1, "applicable": True, "threshold": 1.5},
                            "5": {"k": 5, "applicable": False, "reason": "too few defects"}}}
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    predict.write_bundle([trained / "model.pt"], tmp_path / "metrics.json", tmp_path / "b.pt",
                         {"features": [FPARAMS], "top_k": 5})
    th = predict.load_bundle(tmp_path / "b.pt")["thresholds"]
    assert th["few_label_1"] == {"threshold": 1.5, "oracle": False, "labels": 1}
    assert "few_label_0" not in th and "few_label_5" not in th  # k = 0 is val_mean_std; 5 was not applicable
    df = predict.predict(tmp_path / "b.pt", [str(synth_root / "disc" / "test")], tmp_path / "o",
                         threshold="few_label_1", device="cpu", heatmaps=False)
    assert (df.threshold == 1.5).all() and (df.anomalous == (df.score >= 1.5)).all()
