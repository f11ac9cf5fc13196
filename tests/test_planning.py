"""The package's layers: the planning package imports only itself and the leaves, in one direction (heads → overrides →
config → keys → layout → workload → plan → resources), loads no torch or h5py, and no import circle anywhere."""

import ast
import json
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = ROOT / "workflow" / "dfr"
# the planning package's modules in import order: each imports only those before it and the leaves
LAYERS = ["heads", "overrides", "config", "keys", "layout", "workload", "plan", "resources"]
BESIDE = {"devices", "fetches", "runlock", "failures"}  # planning modules that the layers may import too
# modules that import nothing of the package but each other: the error type, the benchmarks' static facts, a
# file's content hash
LEAVES = {"io", "shapes", "fileid"}


def _name(path) -> str:
    """A module's dotted name inside the package: planning.keys, heads (a package's __init__), cli."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py") if _name(p) not in ("", "__main__")}


def _resolve(dotted: str) -> str | None:
    parts = dotted.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts) or None


def _imports(module: str) -> dict[str, set[str]]:
    """The package modules a module imports: {"top": at module level, "local": inside functions}."""
    tree = ast.parse(MODULES[module].read_text())
    out = {"top": set(), "local": set()}
    top = {n for node in tree.body for n in ast.walk(node)
           if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    for n in ast.walk(tree):
        targets = []
        if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "dfr" and not n.level:
            base = n.module[4:]
            targets = [_resolve(f"{base}.{a.name}" if base else a.name) or _resolve(base) for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.level:
            raise AssertionError(f"dfr.{module}: relative import (the package imports absolutely: from dfr... )")
        elif isinstance(n, ast.Import):
            targets = [_resolve(a.name[4:]) for a in n.names if a.name.startswith("dfr.")]
        out["top" if n in top else "local"] |= {t for t in targets if t and t != module}
    return out


def test_planning_modules_import_only_the_layers_before_them():
    planning = {m.split(".", 1)[1] for m in MODULES if m.startswith("planning.")}
    assert set(LAYERS) | BESIDE <= planning
    for i, m in enumerate(LAYERS):
        imp = _imports(f"planning.{m}")
        allowed = {f"planning.{x}" for x in LAYERS[:i] + sorted(BESIDE)} | LEAVES
        assert imp["top"] <= allowed, f"dfr.planning.{m} imports {sorted(imp['top'] - allowed)}: not before it"
        assert not imp["local"], f"dfr.planning.{m} imports {sorted(imp['local'])} inside a function"
    for m in planning:
        imp = _imports(f"planning.{m}")
        outside = {x for x in imp["top"] | imp["local"] if not x.startswith("planning.") and x not in LEAVES}
        assert not outside, f"dfr.planning.{m} imports {sorted(outside)}: outside the planning package and the leaves"
    for leaf in LEAVES:
        assert not (_imports(leaf)["top"] - LEAVES), f"dfr.{leaf} is a leaf: it imports no other module"


def test_the_package_has_no_import_circle():
    """Every import counts, module-level or inside a function: then no function-local import can be dodging
    a circle (it could as well be at the top)."""
    graph = {m: (lambda i: i["top"] | i["local"])(_imports(m)) for m in MODULES}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                pytest.fail("import circle: " + " -> ".join([*path[path.index(n):], n]))
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_the_shared_import_graph_tool_finds_no_circle():
    tool = ROOT.parent / "shared" / "tools" / "import_graph.py"
    if not tool.is_file():
        pytest.skip(f"{tool} is not here")
    r = subprocess.run([sys.executable, str(tool), str(PACKAGE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "import circle" not in r.stdout, r.stdout + r.stderr


def test_planning_imports_neither_torch_nor_h5py():
    """What the Snakefile and every job's start-up import: the planning layer and the resource estimates."""
    code = ("import sys; sys.path.insert(0, %r); import dfr.planning.plan, dfr.planning.resources, dfr.planning.fetches, dfr.planning.runlock, dfr.planning.failures, dfr.stages.data; "
            "print(__import__('json').dumps(sorted(m for m in ('torch', 'h5py', 'torchvision', 'timm') "
            "if m in sys.modules)))") % str(ROOT / "workflow")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_what_can_be_known_before_a_job_runs_is_checked_when_planning(tmp_path):
    """top_k and the border against the size of A(x), and a folder dataset's categories, refused at the dry run
    (they used to fail in the scores or index job, after features and training)."""
    from conftest import TINY
    from dfr.planning import config as dfr_config
    from dfr.planning import plan
    from dfr.io import DFRError

    base = {**TINY, "features": {**TINY["features"], "weights": "none"}}  # A(x) is 16x16 at 128 px
    plan.Plan(dfr_config.validate({**base, "scoring": {"top_k": 256}}))
    with pytest.raises(DFRError, match=r"scoring.top_k: 100000 is more than the 256 cells of the map: A\(x\) is "
                                       r"16x16 at data.image_size 128 \(tf_efficientnet_lite0, blocks\[2\]\); "
                                       r"choose at most 256"):
        plan.Plan(dfr_config.validate({**base, "scoring": {"top_k": 100000}}))
    with pytest.raises(DFRError, match=r"scoring.top_k: 200 is more than the 196 cells .* without a border of 1"):
        plan.Plan(dfr_config.validate({**base, "scoring": {"top_k": 200, "border": 1}}))
    with pytest.raises(DFRError, match=r"scoring.border: 8 leaves nothing of the map.*choose at most 7"):
        plan.Plan(dfr_config.validate({**base, "scoring": {"top_k": 1, "border": 8}}))
    # an ensemble's fused maps are at its finest member's grid
    ens = {**base, "ensemble": {"members": [{}, {"data.image_size": 256}]}, "scoring": {"top_k": 1000}}
    plan.Plan(dfr_config.validate(ens))
    (tmp_path / "a").mkdir()
    folder = {**base, "datasets": {"mine": {"kind": "folder", "root": str(tmp_path), "categories": ["a", "b"]}}}
    plan.Plan(dfr_config.validate(folder))  # said at plan time, refused only by the jobs that need it
    (line,) = plan.missing_folders(dfr_config.validate(folder))
    assert f"datasets.mine: no folder {tmp_path / 'b'} (datasets.mine.root is" in line


def test_one_run_per_results_folder(tmp_path):
    import os
    import socket

    from dfr.planning import runlock
    from dfr.io import DFRError

    lock = runlock.acquire(tmp_path / "results")
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert runlock.acquire(tmp_path / "results") == lock  # the holder may take it again
    other = os.getppid()  # a live process: another run
    with pytest.raises(DFRError, match=rf"another run writes these results \(pid {os.getpid()} on "
                                       rf"{socket.gethostname()}, started .* in .*\); wait for it to end, or, if it "
                                       rf"is gone, delete .*\.dfr-run\.lock"):
        runlock.acquire(tmp_path / "results", pid=other)
    runlock.release(tmp_path / "results", pid=other)  # not its lock: kept
    assert lock.exists()
    runlock.release(tmp_path / "results")
    assert not lock.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead), "cwd": "/x", "started": "then"}))
    assert runlock.acquire(tmp_path / "results") == lock  # its holder died: taken over
    assert json.loads(lock.read_text())["pid"] == os.getpid()
