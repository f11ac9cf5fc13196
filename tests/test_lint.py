"""The ecosystem's own checks on the workflow: snakemake --lint and snakefmt --check report nothing."""

import subprocess
import sys
from pathlib import Path

from conftest import ROOT

BIN = Path(sys.executable).parent


def test_snakemake_lint_reports_nothing():
    r = subprocess.run([str(BIN / "snakemake"), "--lint", "--snakefile", str(ROOT / "Snakefile")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Congratulations, your workflow is in a good condition!" in out, out[-4000:]


def test_snakefmt_check_passes():
    r = subprocess.run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/Snakefile", "workflow/rules"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:] + "\n(run: snakefmt Snakefile workflow)"
