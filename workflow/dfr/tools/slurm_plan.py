"""How many SLURM submissions a run will make, from Snakemake's own dry run under ``profiles/slurm``.

Snakemake's dry run lists the jobs it would run but not what reaches the queue: a group job (the profile's
``gpu_stages``) is one submission for several stage jobs, a ``localrule`` runs on the submitting node, and a
target rule without outputs (``default``) runs nowhere. ::

    python -m dfr.slurm_plan --configfile config/config.yaml      # any snakemake arguments after it

prints the dry run, then one line: the submissions, the stage jobs they carry, the jobs run on this node.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

_STAMP = re.compile(r"^\[[^\]]*\]\s*")  # the "[Mon Dec  7 04:29:14 2026] " some header lines start with
_ROOT = Path(__file__).resolve().parents[3]
_HEADER = re.compile(r"^(group job|localrule|localcheckpoint|rule|checkpoint) ?(\S*?):?(?: \(|$)", re.I)


def local_rules(rules_file: Path = _ROOT / "workflow" / "rules" / "common.smk") -> set[str]:
    """The workflow's ``localrules:`` (a dry run prints every job as ``rule``, local or not)."""
    m = re.search(r"^localrules:\s*\n((?:[ \t]+\w+,?[ \t]*\n)+)", rules_file.read_text(), re.M)
    if not m:
        raise RuntimeError(f"{rules_file}: no localrules: directive found")
    return set(re.findall(r"\w+", m.group(1)))


def count(dry_run: str, local: set[str] = frozenset()) -> dict[str, int]:
    """What a dry run's text submits: ``groups`` (one submission each, carrying ``grouped`` stage jobs),
    ``single`` jobs submitted alone, ``local`` jobs (rules in ``local``) run on the submitting node;
    ``submissions`` is ``groups + single``. Read from the job headers at the start of a line (a group's
    members are indented)."""
    blocks: list[list] = []  # [kind, rule, indented, has_output]
    for line in dry_run.splitlines():
        indented = line[:1].isspace()
        text = _STAMP.sub("", line.strip())
        m = _HEADER.match(text)
        if m and not text.startswith(("input:", "output:")):
            blocks.append([m.group(1).lower(), m.group(2), indented, False])
        elif blocks and text.startswith("output:"):
            blocks[-1][3] = True
        elif text.startswith("Job stats:") and blocks:
            break  # the table closing the plan; a second copy follows in some versions
    got = {"groups": 0, "grouped": 0, "single": 0, "local": 0}
    for kind, rule, indented, has_output in blocks:
        if kind == "group job":
            got["groups"] += 1
        elif indented:
            got["grouped"] += 1
        elif not has_output:  # a target rule (default, all): runs nowhere
            continue
        elif kind.startswith("local") or rule in local:
            got["local"] += 1
        else:
            got["single"] += 1
    got["submissions"] = got["groups"] + got["single"]
    return got


def summary(got: dict[str, int]) -> str:
    return (f"Under profiles/slurm this run submits {got['submissions']} SLURM job(s): {got['groups']} group "
            f"job(s) carrying {got['grouped']} stage job(s), and {got['single']} single job(s); "
            f"{got['local']} job(s) run on this node.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    profile = _ROOT / "profiles" / "slurm"
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "--profile", str(profile), *argv]
    r = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    if r.returncode == 0:
        text = r.stdout + "\n" + r.stderr
        print("\n" + (summary(count(text, local_rules())) if "Nothing to be done" not in text
                      else "Under profiles/slurm this run submits nothing: every output is up to date."))
    return r.returncode


if __name__ == "__main__":
    raise SystemExit(main())
