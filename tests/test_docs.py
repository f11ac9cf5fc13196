"""README.md and docs/: short, linked, and every shell command in them checked (tests/doccheck.py).

The command check runs once, in one process, on the repository's Markdown and on deliberately broken copies,
so the test shows that it fails for the right reason: each broken command is reported, and only those.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import doccheck  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS, ROOT / "config" / "README.md"]

# each line a command that must fail the check, and why (a fragment of the problem reported)
BROKEN = {
    "make demoo": "no target 'demoo'",
    "make report CONFIG=config/nope.yaml": "config/nope.yaml: no such file",
    # Snakemake 9 reads a target after --configfile as a second config file
    ".venv/bin/snakemake --cores all --configfile config/demo.yaml results/demo/tables/synthetic.md": "does not plan",
    ".venv/bin/snakemake -n results/demo/synthetic/nowhere/bundle.pt --configfile config/demo.yaml": "does not plan",
    ".venv/bin/dfr predict results/demo/synthetic/weave/bundle.pt results/datasets/synthetic/weave/test "
    "--out p --treshold val_percentile": "unrecognized arguments: --treshold",
    ".venv/bin/dfr predict results/demo/synthetic/nowhere/bundle.pt results/datasets/synthetic/weave/test "
    "--out p": "results/demo/synthetic/nowhere/bundle.pt is neither in the repository nor planned",
    ".venv/bin/python -m dfr.tools.rehearsal --configfile config/rehearsal.yaml --runn": "unrecognized arguments: --runn",
    "scripts/gpu-check": "no such executable script",
    "curl -O https://example.org/data.tar": "no check for this command",
}
# the same commands put right: they pass (so the failures above are the mistakes, not the command kinds)
FIXED = [
    "make demo",
    "make report CONFIG=config/demo.yaml",
    ".venv/bin/snakemake results/demo/tables/synthetic.md --cores all --configfile config/demo.yaml",
    ".venv/bin/dfr predict results/demo/synthetic/weave/bundle.pt results/datasets/synthetic/weave/test "
    "--out p --threshold val_percentile",
    ".venv/bin/python -m dfr.tools.rehearsal --configfile config/rehearsal.yaml --run",
    "scripts/gpu-check.sh",
    "curl -O https://example.org/data.tar   # unchecked: a download",
]


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> dict:
    """One run of tests/doccheck.py over the repository's pages and the broken and fixed copies."""
    d = tmp_path_factory.mktemp("docs")
    fence = lambda cmds: "```bash\n" + "\n".join(cmds) + "\n```\n"  # noqa: E731
    (d / "broken.md").write_text("# Broken\n\n" + fence(BROKEN))
    (d / "fixed.md").write_text("# Fixed\n\n" + fence(FIXED))
    readme = (ROOT / "README.md").read_text()
    assert "make demo    #" in readme
    (d / "README-broken.md").write_text(readme.replace("make demo    #", "make demo-run    #", 1))
    files = [*PAGES, d / "broken.md", d / "fixed.md", d / "README-broken.md"]
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "doccheck.py"), *map(str, files)],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    got = json.loads(r.stdout)
    return {Path(k).name if Path(k).parent != ROOT / "config" else "config/README.md": v for k, v in got.items()}


def test_every_command_in_readme_and_docs_checks(checked):
    problems = [p for page in PAGES for p in checked[page.name if page.parent != ROOT / "config"
                                                     else "config/README.md"]["problems"]]
    assert not problems, "\n".join(problems)
    assert checked["README.md"]["checked"] >= 8
    assert sum(checked[p.name]["checked"] for p in DOCS) >= 20
    for page in ("README.md", *(p.name for p in DOCS)):  # what is not checked says why, in the page
        for line in checked[page]["unchecked"]:
            assert "(unchecked: " in line and not line.endswith("(unchecked: )")


def test_the_check_fails_on_broken_commands_for_the_right_reason(checked):
    problems = checked["broken.md"]["problems"]
    assert len(problems) == len(BROKEN), "\n".join(problems)
    for (cmd, why), problem in zip(BROKEN.items(), problems):
        assert why in problem, (cmd, problem)
    assert checked["fixed.md"]["problems"] == []
    assert checked["fixed.md"]["checked"] == len(FIXED) - 1 and len(checked["fixed.md"]["unchecked"]) == 1
    # README with one command broken: that one is reported, nothing else
    broken = checked["README-broken.md"]["problems"]
    assert len(broken) == 1 and "no target 'demo-run'" in broken[0], broken


def test_commands_are_read_from_shell_blocks_only():
    text = ("intro `make nothing`\n```yaml\nkey: make x\n```\n\n```bash\nmake a   # comment\n\n"
            "snakemake --cores all \\\n    --configfile c.yaml\n```\n```\nresults/\n```\n")
    assert doccheck.commands(text) == [(7, "make a   # comment"),
                                       (9, "snakemake --cores all      --configfile c.yaml")]


def test_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024, f"README.md is {len(readme.encode())} bytes (goal: 12 KB at most)"
    for page in DOCS:
        assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"
        assert "(../README.md)" in page.read_text(), f"docs/{page.name} does not link back to README"


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for h in re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M):
        out.add(re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest.read_text()), f"{page.name}: link to {target}: no such heading"
