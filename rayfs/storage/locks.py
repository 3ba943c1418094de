"""Exclusive ``flock`` locks on files, held for a process's life (the kernel drops them when it exits).

Used for "one live owner" rules: one shard process per shard folder, one writer per WAL.
"""

from __future__ import annotations

import fcntl
import time
from typing import IO

__all__ = ["try_lock", "wait_lock"]


def try_lock(path: str) -> IO | None:
    """An open handle holding an exclusive lock on ``path`` (created if needed), or ``None`` if taken."""
    try:
        fh = open(path, "a+")  # noqa: SIM115 - the caller holds it
    except OSError:
        return None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fh
    except BlockingIOError:
        fh.close()
        return None


def wait_lock(path: str, timeout_s: float) -> IO | None:
    """Like :func:`try_lock`, retrying for ``timeout_s`` (e.g. while a previous owner is exiting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        fh = try_lock(path)
        if fh is not None or time.monotonic() > deadline:
            return fh
        time.sleep(0.05)
