"""One run per results folder: a lock in the folder, taken for the whole run and released when it ends.

Snakemake locks its working directory; two runs from different working directories that write the same
absolute ``results:`` would still run at once and clobber each other's artifacts. The Snakefile's ``onstart``
takes this lock (a second run is refused, naming the holder), ``onsuccess`` and ``onerror`` release it; a lock
whose holder has died on this host is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from dfr.io import DFRError

NAME = ".dfr-run.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def acquire(results: str | os.PathLike, pid: int | None = None) -> Path:
    """Take the results folder's lock for this process (or ``pid``); refuse if another live run holds it."""
    folder = Path(results)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / NAME
    me = {"host": socket.gethostname(), "pid": pid or os.getpid(), "cwd": os.getcwd(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                    and not _alive(holder["pid"]):
                lock.unlink(missing_ok=True)  # its run died without releasing it
                continue
            if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
                return lock
            raise DFRError(f"{folder.resolve()}: another run writes these results (pid {holder.get('pid', '?')} on "
                           f"{holder.get('host', '?')}, started {holder.get('started', '?')} in "
                           f"{holder.get('cwd', '?')}); wait for it to end, or, if it is gone, delete {lock}")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return lock
    raise DFRError(f"{lock}: could not be taken")


def release(results: str | os.PathLike, pid: int | None = None) -> None:
    """Drop the lock if this process (or ``pid``) holds it."""
    lock = Path(results) / NAME
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return
    if holder.get("pid") == (pid or os.getpid()) and holder.get("host") == socket.gethostname():
        lock.unlink(missing_ok=True)
