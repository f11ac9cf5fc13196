"""Fault injection against the session's tiny run: each artifact truncated or garbled in turn and read by the
stage that consumes it (the very command its rule runs, from a dry run's printed shell commands, in-process);
a run killed while its maps and then its metrics are written, and rerun. What the user sees must be one line
that names the file and the fault (exit status 2), never a traceback or a result made from the damage."""

import json
import os
import shlex
import signal
import subprocess
import time

import pytest

from conftest import ROOT, SNAKEMAKE, TINY, planned_jobs, snakemake, tiny_paths

pytestmark = [pytest.mark.slow, pytest.mark.extended]

CAT = "results/tiny/synth/disc"


@pytest.fixture(scope="module")
def commands(tiny_run):
    """rule -> the shell command Snakemake runs for disc (its arguments after ``python -m dfr``)."""
    r = snakemake(tiny_run, TINY, "-n", "-p", "--forceall", f"{CAT}/bundle.pt", "results/tiny/tables/synth.csv")
    assert r.returncode == 0, r.stderr[-3000:]
    out, rule = {}, None
    for line in r.stdout.splitlines():
        if line.startswith("rule "):
            rule = line[5:].rstrip(":")
        elif line.startswith("Shell command: ") and ("/disc" in line or rule == "tables"):
            argv = shlex.split(line[len("Shell command: "):].split(" > ")[0])
            assert argv[:3] == ["python", "-m", "dfr"], argv
            out[rule] = argv[3:]
    return out


# artifact -> (the rule that consumes it, the argument that names it there)
READERS = {
    "index": ("split", "--index"),
    "split": ("pca", "--split-json"),
    "features_train": ("train", "--features"),  # reads every image: training and validation
    "pca": ("train", "--pca"),
    "model": ("maps", "--model"),
    "maps": ("scores", "--maps"),
    "scores": ("metrics", "--scores"),
    "metrics": ("tables", "--metrics"),
    "bundle": ("predict", None),
}


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":  # a writer killed half-way (or a copy cut short)
        path.write_bytes(data[: len(data) // 2])
    else:  # garbled: 256 bytes in the middle overwritten (a bad sector, a stray write)
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes((i * 151 + 7) % 256 for i in range(256)) + data[mid + 256:])


@pytest.fixture(scope="module")
def damaged_run(tiny_run, tmp_path_factory):
    """One copy of the tiny run for the whole matrix: each case damages one file and puts it back."""
    import shutil

    dest = tmp_path_factory.mktemp("faults") / "run"
    shutil.copytree(tiny_run, dest, symlinks=True)
    return dest


@pytest.mark.parametrize("how", ["truncated", "garbled"])
@pytest.mark.parametrize("artifact", list(READERS))
def test_a_damaged_artifact_is_named_by_its_reader(artifact, how, damaged_run, commands, capsys, monkeypatch):
    from dfr import cli

    wd = damaged_run
    monkeypatch.chdir(wd)
    paths = tiny_paths(wd, TINY, "synth", "disc")
    target = paths[artifact]
    good = target.read_bytes()
    damage(target, how)
    try:
        _read_damaged(wd, artifact, how, target, commands, capsys, monkeypatch, cli)
    finally:
        target.write_bytes(good)


def _read_damaged(wd, artifact, how, target, commands, capsys, monkeypatch, cli):
    rule, flag = READERS[artifact]
    monkeypatch.setenv("DFR_RUNTIME", json.dumps({"device": "cpu", "weights_files": {}}))
    if rule == "predict":
        image = next((wd / "results" / "datasets" / "synth" / "disc" / "test" / "good").glob("*.png"))
        argv = ["predict", str(target), str(image), "--out", str(wd / "pred")]
    else:
        argv = list(commands[rule])
        rel = str(target.relative_to(wd))
        assert rel in argv[argv.index(flag) + 1:], (rule, flag, rel, argv)
    capsys.readouterr()
    rc = cli.main(argv)  # an exception escaping here is the traceback a user would have seen
    err = capsys.readouterr().err
    assert rc == 2, f"{artifact} {how}: the {rule} stage went on (exit {rc}): {err[-2000:]}"
    line = next((ln for ln in err.splitlines() if ln.startswith(f"dfr {rule}: error: ")), err[-2000:])
    assert target.name in line and str(target.parent.name) in line, line
    assert "Traceback" not in err


def _run_until(wd, cfg, target, log, timeout=300):
    """Start a run and kill it (SIGKILL to its whole process group: a node lost, not a polite stop) as soon as
    ``log`` shows that job started; returns once everything is dead."""
    cfg_path = wd / "config.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(cfg))
    p = subprocess.Popen([SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(wd), "--configfile",
                          str(cfg_path), "--cores", "2", target], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.monotonic()
    try:
        while not log.exists() or log.stat().st_mtime < t0 - 1:
            assert p.poll() is None, "the run ended before the job to kill started"
            assert time.monotonic() - t0 < timeout
            time.sleep(0.05)
        time.sleep(0.3)  # inside the job: imports done, reading or writing
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _rerun_after_kill(wd, cfg, target):
    """The rerun after a run killed outright. Where the kill left Snakemake's own directory lock, the rerun
    says so and names --unlock (Snakemake's message): that command works, and the run after it goes through."""
    r = snakemake(wd, cfg, target)
    out = r.stdout + r.stderr
    if r.returncode != 0:
        assert "Directory cannot be locked" in out and "--unlock" in out, out[-3000:]
        u = snakemake(wd, cfg, target, "--unlock")
        assert u.returncode == 0, (u.stdout + u.stderr)[-3000:]
        r = snakemake(wd, cfg, target)
    return r


def test_a_run_killed_in_maps_then_in_metrics_recovers_on_a_plain_rerun(tiny_copy):
    wd = tiny_copy
    target = f"{CAT}/metrics.json"
    edit = {**TINY, "cae": {**TINY["cae"], "epochs": 2}}
    paths = tiny_paths(wd, edit, "synth", "disc")
    logs = wd / "results" / "logs"
    maps_log = logs / "maps" / "synth" / "disc" / (paths["maps"].parent.name + ".log")
    (wd / "results" / ".dfr-run.lock").unlink(missing_ok=True)
    _run_until(wd, edit, target, maps_log)
    assert not paths["maps"].exists(), "a killed maps job left its output under the final name"
    r = _rerun_after_kill(wd, edit, target)  # our own stale run lock is taken over, maps are made again
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "maps" in planned_jobs(out), out[-3000:]
    edit2 = {**edit, "thresholds": {**edit.get("thresholds", {}), "alpha": 2.0}}
    _run_until(wd, edit2, target, logs / "tiny" / "metrics" / "synth" / "disc.log")
    # what lies under the final name is the old, whole file (results are written to a temporary, then renamed)
    assert not paths["metrics"].exists() or json.loads(paths["metrics"].read_text())["n_test"] > 0
    r = _rerun_after_kill(wd, edit2, target)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert planned_jobs(out) == {"metrics": 1}, out[-3000:]
    m = json.loads(paths["metrics"].read_text())
    assert m["n_test"] > 0
    left = [p.name for p in (wd / "results").rglob(".*") if p.is_file() and p.name != ".dfr-run.lock"
            and not p.name.startswith(".snakemake")]  # Snakemake's own markers of directory outputs
    assert not left, f"temporaries left behind: {left}"
    assert not (wd / "results" / ".dfr-run.lock").exists()
