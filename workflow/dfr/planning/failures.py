"""What failed, in a few lines: the workflow's ``onerror`` handler prints each failed job's own error.

Every rule sends its job's output to a log under ``<results>/logs/``, so Snakemake's own error block shows the shell
command and "check log file(s) for error details". The workflow's default profile sets ``show-failed-logs``
(Snakemake then prints each failed job's whole log); this summary comes last, where a terminal's reader
looks first: one entry per failed job, its rule, its log and the ``dfr <stage>: error: ...`` lines of that
log (or, for a job that died without one, e.g. killed for memory, the last lines of its log).

Planning-side: no torch, no h5py (the Snakefile imports it).
"""

from __future__ import annotations

import re
from pathlib import Path

_RULE = re.compile(r"^Error in rule (\S+?):\s*$")
_GROUP = re.compile(r"^Error in group (\S+?):\s*$")  # a group job (the SLURM profile's gpu_stages)
_MEMBER = re.compile(r"^\s+rule (\S+?):\s*$")  # one of a group's jobs
_LOG = re.compile(r"^\s+log: (.*?)(?: \(check log file\(s\) for error details\))?\s*$")
_ERROR = re.compile(r"^dfr [\w-]+: error: ")


def failed_jobs(snakemake_log: str) -> list[tuple[str, list[str]]]:
    """(rule, its log files) of every failed job in Snakemake's own log text: each ``Error in rule`` block, and
    each job of an ``Error in group`` block (the group's own log, its cluster log, is not a job's)."""
    jobs: list[tuple[str, list[str]]] = []
    block = job = None  # "rule" or "group"; the job whose log line comes next
    for line in snakemake_log.splitlines():
        m = _RULE.match(line) or _GROUP.match(line)
        if m:
            block = "rule" if line.startswith("Error in rule") else "group"
            job = None
            if block == "rule":
                jobs.append((m.group(1), []))
                job = jobs[-1]
            continue
        if block is None:
            continue
        if line and not line.startswith((" ", "\t")):  # the block ended
            block = job = None
            continue
        m = _MEMBER.match(line)
        if m and block == "group":
            jobs.append((m.group(1), []))
            job = jobs[-1]
            continue
        m = _LOG.match(line)
        if m and job is not None:
            job[1].extend(p.strip() for p in m.group(1).split(",") if p.strip())
            job = None
    return jobs


def job_error(log_file: str | Path, tail: int = 3) -> list[str]:
    """The ``dfr <stage>: error:`` lines of a job's log with their indented continuation lines; failing those,
    its last ``tail`` non-empty lines (a traceback's last line, a kill's message)."""
    try:
        lines = Path(log_file).read_text(errors="replace").splitlines()
    except OSError:
        return []
    out: list[str] = []
    for i, line in enumerate(lines):
        if _ERROR.match(line):
            out.append(line)
            out += _continuation(lines[i + 1:])
    if out:
        return out
    return [ln for ln in lines if ln.strip()][-tail:]


def _continuation(lines: list[str]) -> list[str]:
    out = []
    for ln in lines:
        if not ln.startswith("  "):
            break
        out.append(ln)
    return out


def summary(snakemake_logs: list[str] | str) -> str:
    """The failed jobs of a run and their own errors, from Snakemake's log file(s); '' when none is found."""
    paths = [snakemake_logs] if isinstance(snakemake_logs, (str, Path)) else list(snakemake_logs or [])
    text = ""
    for p in paths:
        try:
            text += Path(p).read_text(errors="replace") + "\n"
        except OSError:
            continue
    jobs = failed_jobs(text)
    if not jobs:
        return ""
    out = [f"{len(jobs)} job(s) failed; each one's own error (its full log is named):"]
    for rule, logs in jobs:
        own = [p for p in logs if p.startswith("logs/") or "/logs/" in p] or logs
        if own and not any(Path(p).exists() for p in own):  # a job of a failed group that never started
            out.append(f"- rule {rule} (log: {', '.join(own)}): did not run")
            continue
        lines = [ln for p in own for ln in job_error(p)]
        out.append(f"- rule {rule} (log: {', '.join(own) or 'none'})")
        out += [f"    {ln}" for ln in lines] or ["    (its log holds no error line)"]
    return "\n".join(out)
