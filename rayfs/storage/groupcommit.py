"""Group commit: many appends, one fsync, every ack after the fsync that covers it.

A :class:`GroupCommit` owns a background thread that fsyncs a log at most every ``interval_s`` while
appends are waiting. :meth:`GroupCommit.wait` blocks the caller until an fsync that started after its
append has completed, so an acknowledged batch is always on stable storage, while concurrent writers
share the cost of one fsync.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["GroupCommit"]


class GroupCommit:
    """Batch fsyncs of ``sync`` across concurrent appenders.

    >>> calls = []
    >>> gc = GroupCommit(lambda: calls.append(1), interval_s=0.001)
    >>> gc.wait(gc.ticket()); gc.close(); len(calls) >= 1
    True
    """

    def __init__(self, sync: Callable[[], None], *, interval_s: float = 0.002) -> None:
        self._sync = sync
        self._interval = interval_s
        self._cv = threading.Condition()
        self._issued = 0      # tickets handed out (one per append)
        self._synced = 0      # every ticket <= this is durable
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="rayfs-group-commit", daemon=True)
        self._thread.start()

    def ticket(self) -> int:
        """Call right after an append; pass the result to :meth:`wait`."""
        with self._cv:
            self._issued += 1
            self._cv.notify_all()
            return self._issued

    def wait(self, ticket: int) -> None:
        """Block until the append behind ``ticket`` is durable (re-raises a failed fsync)."""
        with self._cv:
            while self._synced < ticket and self._error is None:
                self._cv.wait()
            if self._error is not None and self._synced < ticket:
                raise self._error

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._issued == self._synced and not self._closed:
                    self._cv.wait()
                if self._closed and self._issued == self._synced:
                    return
            time.sleep(self._interval)  # let concurrent appends join this fsync
            with self._cv:
                target = self._issued
            try:
                self._sync()
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter
                with self._cv:
                    self._error = exc
                    self._cv.notify_all()
                return
            with self._cv:
                self._synced = max(self._synced, target)
                self._cv.notify_all()

    def close(self) -> None:
        """Sync what is pending and stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()
