"""Peak memory of the driver and every process it spawned (Ray's GCS, raylet, workers, shard actors).

Uses psutil when installed, else ``/proc``. Reports the peak of the summed RSS (counts shared pages,
e.g. Ray's object store, once per process) and of the summed PSS (shared pages split fairly), sampled
every ``interval`` seconds in a background thread.
"""

from __future__ import annotations

import os
import threading

try:  # pragma: no cover - optional
    import psutil
except ImportError:  # pragma: no cover
    psutil = None


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def process_tree(root: int | None = None) -> list[int]:
    """``root`` (default: this process) and all its descendants."""
    root = os.getpid() if root is None else root
    if psutil is not None:
        p = psutil.Process(root)
        return [root] + [c.pid for c in p.children(recursive=True)]
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _mem(pid: int) -> tuple[int, int]:
    """(rss, pss) bytes of one process; (0, 0) if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            rss = pss = 0
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
            return rss, pss
    except OSError:
        return 0, 0


def _cmd(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:80]
    except OSError:
        return ""


def _role(pid: int) -> str:
    """driver, shards, coordinator or other (Ray's own processes, idle workers) by process title."""
    if pid == os.getpid():
        return "driver"
    cmd = _cmd(pid)
    if "ShardService" in cmd or "ShardCore" in cmd:  # ray::ShardService.<method>, ray::rayfs:<id>:shard-...
        return "shards"
    if "Coordinator" in cmd:
        return "coordinator"
    return "other"


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process tree, summed per :func:`_role`.

    The difference of two calls is the work done in between, whatever else the machine runs (wall times
    grow on a busy machine, CPU seconds much less).
    """
    tick = os.sysconf("SC_CLK_TCK")
    out = dict.fromkeys(("driver", "shards", "coordinator", "other"), 0.0)
    for pid in process_tree():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[_role(pid)] += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return out


def snapshot() -> dict:
    pids = process_tree()
    rss = pss = shard_rss = 0
    for pid in pids:
        r, p = _mem(pid)
        rss += r
        pss += p
        if _role(pid) == "shards":
            shard_rss += r
    driver_rss = _mem(os.getpid())[0]
    return {"rss": rss, "pss": pss, "driver_rss": driver_rss, "shard_rss": shard_rss, "processes": len(pids)}


class PeakSampler:
    """``with PeakSampler() as s: ...`` then ``s.peak`` (max of each figure over the samples)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak: dict = {}
        self.start: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        snap = snapshot()
        if not self.start:
            self.start = snap  # what the processes held before: the growth is ``peak - start``
        for k, v in snap.items():
            self.peak[k] = max(self.peak.get(k, 0), v)

    def growth(self, key: str = "rss") -> int:
        """Peak minus the figure at the start (bytes)."""
        return self.peak.get(key, 0) - self.start.get(key, 0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
