"""Group commit: every waiter returns only after a sync that began after its ticket; syncs are shared."""

from __future__ import annotations

import threading

import pytest

from rayfs.storage.groupcommit import GroupCommit


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.appended = 0      # appends written so far
        self.synced_upto = 0   # appends covered by the last completed sync
        self.syncs = 0

    def append(self) -> int:
        with self.lock:
            self.appended += 1
            return self.appended

    def sync(self) -> None:
        with self.lock:
            upto = self.appended
        with self.lock:
            self.synced_upto = max(self.synced_upto, upto)
            self.syncs += 1


def test_every_ack_is_covered_by_a_sync_and_syncs_are_shared():
    rec = Recorder()
    gc = GroupCommit(rec.sync, interval_s=0.002)
    violations = []

    def writer():
        for _ in range(50):
            pos = rec.append()
            gc.wait(gc.ticket())
            with rec.lock:
                if rec.synced_upto < pos:
                    violations.append(pos)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.close()
    assert not violations
    assert rec.appended == 400
    assert rec.syncs < 400  # concurrent appends shared fsyncs


def test_a_failed_sync_reaches_every_waiter():
    def boom() -> None:
        raise OSError("disk on fire")

    gc = GroupCommit(boom, interval_s=0.001)
    with pytest.raises(OSError, match="disk on fire"):
        gc.wait(gc.ticket())
    with pytest.raises(OSError):
        gc.wait(gc.ticket())
    gc.close()


def test_close_without_pending_work_returns():
    gc = GroupCommit(lambda: None)
    gc.close()
