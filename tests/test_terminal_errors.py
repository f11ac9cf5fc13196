"""A failed job's own error on the terminal, and files that Pillow cannot (or must not) decode, named.

Written from the user's side: the run started as README says (Snakemake, or `dfr predict`), and what the
terminal shows is read.
"""

import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import TINY, snakemake
from dfr.stages import data, features
from dfr.planning import failures
from dfr.io import DFRError


def _png_declaring(path, width, height):
    """A PNG whose header declares width x height (8-bit grey) followed by a few bytes of image data: what a
    decompression bomb, or a huge scan, looks like before it is decoded."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# What Pillow documents for Image.open and Image.load (and what its decoders let through): each reaches the
# user as one line naming the file.
PILLOW_ERRORS = [Image.UnidentifiedImageError("cannot identify image file"), OSError("image file is truncated"),
                 ValueError("bad mode"), TypeError("bad header"), SyntaxError("not a PNG file"), EOFError(),
                 struct.error("unpack requires a buffer"), zlib.error("incorrect header check"),
                 Image.DecompressionBombError("Image size (200000000 pixels) exceeds limit")]


@pytest.mark.parametrize("exc", PILLOW_ERRORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("reader", ["load_image", "load_mask"])
def test_every_error_pillow_raises_names_the_file(exc, reader, tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(path)

    def broken(*a, **k):
        raise exc

    monkeypatch.setattr(Image, "open", broken)
    with pytest.raises(DFRError, match=r"x\.png: (unreadable|.* too large)"):
        getattr(features if reader == "load_image" else data, reader)(path)


def test_an_image_above_the_pixel_limit_is_refused_before_it_is_decoded(tmp_path):
    bomb = _png_declaring(tmp_path / "bomb.png", 20000, 20000)
    # its image data is a few bytes: decoding would fail as truncated, so "not decoded" shows it was not tried
    with pytest.raises(DFRError, match=r"bomb\.png: image of 20000x20000 = 400,000,000 pixels, above the limit "
                                       r"of 1,000,000: not decoded"):
        features.load_image(bomb, max_pixels=1_000_000)
    # without a limit of its own, Pillow's (twice MAX_IMAGE_PIXELS) refuses it, named
    with pytest.raises(DFRError, match=r"bomb\.png: image too large to decode safely"):
        features.load_image(bomb)


def test_an_image_that_breaks_in_a_loader_worker_is_named_without_its_traceback(synth_root, tmp_path):
    """features reads images in loader processes: an image damaged after indexing is named as in the main
    process, not wrapped in the worker's traceback."""
    import shutil

    from dfr.stages import features

    root = tmp_path / "d"
    shutil.copytree(synth_root / "disc", root / "disc")
    idx = tmp_path / "index.csv"
    data.write_index(data.index_category(root, "disc"), idx)
    victim = sorted((root / "disc" / "train" / "good").glob("*.png"))[3]
    victim.write_bytes(victim.read_bytes()[:200])
    params = {"backbone": "resnet18", "weights": "none", "layers": ["layer2[-1]", "layer3[-1]"], "pool": 3,
              "image_size": 64, "normalize": True, "dtype": "float16", "batch_size": 2, "num_workers": 2,
              "device": "cpu"}
    with pytest.raises(DFRError) as e:
        features.extract(idx, "train", tmp_path / "f.h5", params)
    assert str(e.value).startswith(f"{victim}: unreadable or truncated image")
    assert "Traceback" not in str(e.value) and "worker" not in str(e.value)


def test_predict_skips_a_huge_image_names_it_and_scores_the_others(tiny_run, tmp_path, capsys):
    from dfr import cli

    cat = tiny_run / "results" / "tiny" / "synth" / "disc"
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted((tiny_run / "results" / "datasets" / "synth" / "disc" / "test" / "good").glob("*.png"))[:2]
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    _png_declaring(folder / "scan.png", 12000, 12000)  # 144 MP: above Pillow's limit, below twice it
    code = cli.main(["predict", str(cat / "bundle.pt"), str(folder), "--out", str(tmp_path / "o"), "--no-images"])
    out = capsys.readouterr()
    assert code == 1, out.err[-2000:]  # documented: some images could not be read, the others are scored
    assert "2 images scored" in out.out and "1 skipped" in out.out
    assert "Traceback" not in out.out + out.err
    pred = pd.read_csv(tmp_path / "o" / "predictions.csv", keep_default_na=False).set_index("path")
    assert "12000x12000 = 144,000,000 pixels, above the limit of 89,478,485: not decoded" in pred.loc[
        str(folder / "scan.png"), "error"]
    assert np.isfinite(pred.loc[[str(folder / p.name) for p in good], "score"].astype(float)).all()
    # --max-pixels moves the limit: at 100 pixels every image is refused, and nothing is scored (exit 2)
    code = cli.main(["predict", str(cat / "bundle.pt"), str(folder), "--out", str(tmp_path / "o2"), "--no-images",
                     "--max-pixels", "100"])
    out = capsys.readouterr()
    assert code == 2 and "nothing was scored" in out.err and "above the limit of 100" in out.err


SNAKEMAKE_LOG = """\
Error in rule index:
    message: None
    jobid: 7
    output: results/prepared/synth/disc/index.csv
    log: logs/index/synth/disc.log (check log file(s) for error details)
    shell:
        python -m dfr index ...
Error in rule features:
    message: SLURM-job '41' failed, SLURM status is: 'FAILED'. For further error details see the cluster/cloud log.
    jobid: 9
    log: logs/features/synth/grain/k/train.log, .snakemake/slurm_logs/rule_features/41.log (check log file(s) for error details)
Error in rule maps:
    jobid: 12
    log: logs/maps/x.log (check log file(s) for error details)
Error in group gpu_stages:
    message: SLURM-job '52' failed, SLURM status is: 'FAILED'.
    jobs:
        rule features:
            jobid: 3
            output: results/features/s/disc/k/train.h5
            log: logs/features/s/disc/k/train.log (check log file(s) for error details)
        rule train:
            jobid: 4
            log: logs/train/s/disc/m.log (check log file(s) for error details)
    log: .snakemake/slurm_logs/group_gpu_stages/52.log (check log file(s) for error details)
"""


def test_the_summary_reads_snakemakes_local_and_slurm_error_blocks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs" / "index" / "synth").mkdir(parents=True)
    (tmp_path / "logs/index/synth/disc.log").write_text(
        "2026 INFO x: indexing\ndfr index: error: results/d: 1 problem(s) in the dataset:\n"
        "  results/d/ground_truth/a/000_mask.png: mask is 17x13 but its image is 240x192\n2026 INFO: wall 0.4 s\n")
    (tmp_path / "logs/features/synth/grain/k").mkdir(parents=True)
    (tmp_path / "logs/features/synth/grain/k/train.log").write_text("Traceback (most recent call last):\n  ...\n"
                                                                  "RuntimeError: CUDA out of memory\n")
    log = tmp_path / "snakemake.log"
    log.write_text(SNAKEMAKE_LOG)
    assert failures.failed_jobs(SNAKEMAKE_LOG) == [
        ("index", ["logs/index/synth/disc.log"]),
        ("features", ["logs/features/synth/grain/k/train.log", ".snakemake/slurm_logs/rule_features/41.log"]),
        ("maps", ["logs/maps/x.log"]), ("features", ["logs/features/s/disc/k/train.log"]),
        ("train", ["logs/train/s/disc/m.log"])]  # a group's jobs, each with its own log; not the group's
    (tmp_path / "logs/features/s/disc/k").mkdir(parents=True)
    (tmp_path / "logs/features/s/disc/k/train.log").write_text("dfr features: error: w.pth: not a readable "
                                                               "PyTorch state dict\n")
    text = failures.summary([str(log)])
    assert text.splitlines() == [
        "5 job(s) failed; each one's own error (its full log is named):",
        "- rule index (log: logs/index/synth/disc.log)",
        "    dfr index: error: results/d: 1 problem(s) in the dataset:",
        "      results/d/ground_truth/a/000_mask.png: mask is 17x13 but its image is 240x192",
        "- rule features (log: logs/features/synth/grain/k/train.log)",  # the job's own log, not SLURM's
        "    Traceback (most recent call last):",  # no error line: the log's last lines
        "      ...",
        "    RuntimeError: CUDA out of memory",
        "- rule maps (log: logs/maps/x.log): did not run",
        "- rule features (log: logs/features/s/disc/k/train.log)",
        "    dfr features: error: w.pth: not a readable PyTorch state dict",
        "- rule train (log: logs/train/s/disc/m.log): did not run"]
    assert failures.summary([str(tmp_path / "missing.log")]) == ""


@pytest.mark.extended
@pytest.mark.slow
def test_a_broken_file_is_named_on_the_terminal_and_the_other_categories_go_on(tiny_copy):
    """A newcomer breaks a training image of one category and runs Snakemake with --keep-going: the terminal
    ends with one entry naming the job's log and the file; the other category's work is done; the next run
    fails the same way instead of trusting the old index (a failed index's output is removed)."""
    victim = tiny_copy / "results" / "datasets" / "synth" / "disc" / "train" / "good" / "003.png"
    victim.write_bytes(victim.read_bytes()[:150])
    grain_metrics = tiny_copy / "results" / "tiny" / "synth" / "grain" / "metrics.json"
    grain_metrics.unlink()
    for attempt in (1, 2):
        r = snakemake(tiny_copy, TINY, "--keep-going")
        assert r.returncode != 0
        tail = r.stderr[r.stderr.index("job(s) failed; each one's own error"):]
        assert "- rule index (log: results/logs/index/synth/disc.log)" in tail, tail
        assert "dfr index: error: results/datasets/synth/disc: 1 problem(s) in the dataset:" in tail
        assert "results/datasets/synth/disc/train/good/003.png: unreadable or truncated image" in tail
        assert "Traceback" not in r.stderr
        assert "DFR_RUNTIME" not in r.stderr  # the failed command Snakemake prints is the rule's own
        assert grain_metrics.is_file(), f"attempt {attempt}: the other category was not scored"
