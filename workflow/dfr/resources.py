"""What a job needs and what it used: memory and runtime estimates for the rules, measured peak RSS.

The Snakemake rules declare ``mem_mb`` and ``runtime`` from these functions, computed from what a job
processes (images, pixels, channels, epochs) and multiplied by the attempt number, so that a retry asks for
more. The constants are measured (see README, "Full-size rehearsal"): each estimate is a start-up
baseline (Python, torch, libraries) plus a per-unit cost with headroom.
"""

from __future__ import annotations

import os
import resource
import sys

MB = 2**20


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident set size of this process (MB)."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else peak_rss_mb()


def reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb(children: bool = False) -> float:
    """Peak RSS of this process (since start or the last :func:`reset_peak`), plus its children's largest."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1 if sys.platform != "darwin" else 1024)
    if children:
        kb += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return kb / 1024


def cpu_seconds() -> float:
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def threads_default() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
