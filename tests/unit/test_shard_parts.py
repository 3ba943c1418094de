"""The shard's parts on their own, without Ray: WindowBuffers (what a buffer keeps at the exact window
boundary, reset for a longer window, expiry of old chunks, cache invalidation, snapshot round trip) and
ReplayCache (reading from the log, loading, indexes kept current as batches arrive, compaction), each checked
against a brute-force count of the events.
"""

from __future__ import annotations

import numpy as np
import pytest

from rayfs.engine.columns import TS, Batch, decode_batch, encode_batch
from rayfs.engine.fold import SEQ, SEQ_ROW_BITS, WindowEvents, compile_feature, slot_column
from rayfs.engine.keyindex import KeyIndex
from rayfs.model.definitions import Feature
from rayfs.shard.replay_cache import COMPACT_PARTS, ReplayCache
from rayfs.shard.windows import WindowBuffers
from rayfs.storage.log import SegmentedLog

H = 3_600_000_000  # one hour in µs
SLOT = slot_column("user")


def feat(name: str, window: str | None = None, *, stream: str = "ev", agg: str = "count", column=None) -> Feature:
    return Feature(name=name, stream=stream, entity="user", agg=agg, column=column, window=window)


def batch(ts: list[int], slots: list[int], offset: int = 0, x: list[float] | None = None) -> Batch:
    """A decoded batch as a shard folds it: times, seq, slots (and a value column ``x``)."""
    n = len(ts)
    cols = {TS: np.array(ts, dtype=np.int64), SLOT: np.array(slots, dtype=np.int64),
            SEQ: (np.int64(offset) << np.int64(SEQ_ROW_BITS)) + np.arange(n, dtype=np.int64)}
    if x is not None:
        cols["x"] = np.array(x, dtype=np.float64)
    return cols


def fill(wb: WindowBuffers, stream: str, cols: Batch) -> None:
    """What the shard does with a logged batch: raise the newest event time, then buffer the batch."""
    wb.advance(stream, int(cols[TS].max()))
    wb.append(stream, cols)


# ------------------------------------------------------------------------------------------------ WindowBuffers
def test_buffer_keeps_events_at_the_exact_floor_and_reads_see_the_exact_window_start():
    f = feat("n_1h", "1h")
    wb = WindowBuffers({f.key: f})
    fill(wb, "ev", batch([0, H - 1, H, H + 1, 2 * H], [0, 0, 0, 0, 0]))
    # floor = local max - window = H: the event at exactly H stays, those before it go.
    assert wb.floor("ev") == H
    assert wb.merged("ev")[TS].tolist() == [H, H + 1, 2 * H]
    cf = compile_feature(f, None)
    # At watermark 2H a read sees ts >= 2H + 1 - 1h = H + 1 (an observation at 2H + 1µs): not H itself.
    assert wb.read(f.key, cf, np.array([0, 1, -1]), 2 * H).tolist() == [2, 0, 0]
    # One µs later the window starts at H + 2: the event at H + 1 is out.
    assert wb.read(f.key, cf, np.array([0]), 2 * H + 1).tolist() == [1]
    # Without a watermark every buffered event counts.
    assert wb.read(f.key, cf, np.array([0]), None).tolist() == [3]


def test_old_chunks_expire_as_newer_events_arrive():
    f = feat("n_1h", "1h")
    wb = WindowBuffers({f.key: f})
    fill(wb, "ev", batch([0, 10], [0, 1]))
    fill(wb, "ev", batch([H + 5], [0], offset=1))
    # The floor is now H + 5 - 1h = 5: the first chunk stays (its newest event, 10, is above the floor),
    # its event at 0 is dropped when the chunks are merged.
    assert wb.merged("ev")[TS].tolist() == [10, H + 5]
    fill(wb, "ev", batch([3 * H], [1], offset=2))
    assert wb.merged("ev")[TS].tolist() == [3 * H]
    assert wb.local_max == {"ev": 3 * H}


def test_stream_without_windowed_feature_buffers_nothing():
    f = feat("n")
    wb = WindowBuffers({f.key: f})
    fill(wb, "ev", batch([0, H], [0, 0]))
    assert wb.merged("ev") == {}
    assert not wb.is_stale("ev") and wb.longest_window("ev") == 0


def test_reset_for_a_longer_window_then_refill():
    short, features = feat("n_1h", "1h"), {}
    features[short.key] = short
    wb = WindowBuffers(features)
    events = [batch([0, H], [0, 0]), batch([2 * H, 3 * H], [0, 1], offset=1)]
    for cols in events:
        fill(wb, "ev", cols)
    assert wb.merged("ev")[TS].tolist() == [2 * H, 3 * H]
    long = feat("n_3h", "3h")
    features[long.key] = long
    assert wb.is_stale("ev")  # built for 1h, the stream's longest window is now 3h
    wb.reset("ev")
    assert not wb.is_stale("ev") and wb.merged("ev") == {} and wb.floor("ev") == 0
    for cols in events:  # the refill the backfill does from the log
        if cols[TS].max() >= wb.floor("ev"):
            wb.append("ev", cols)
    assert wb.merged("ev")[TS].tolist() == [0, H, 2 * H, 3 * H]
    cf = compile_feature(long, None)
    # At watermark 3H the 3h window starts at 1µs: the event at 0 is out, H, 2H and 3H are in.
    assert wb.read(long.key, cf, np.array([0, 1]), 3 * H).tolist() == [2, 1]


def test_appending_invalidates_the_cached_events_of_that_stream_only():
    f, g = feat("n_1h", "1h"), feat("m_1h", "1h", stream="other")
    wb = WindowBuffers({f.key: f, g.key: g})
    cf, cg = compile_feature(f, None), compile_feature(g, None)
    fill(wb, "ev", batch([H], [0]))
    fill(wb, "other", batch([H], [0]))
    assert wb.read(f.key, cf, np.array([0]), H).tolist() == [1]
    assert wb.read(g.key, cg, np.array([0]), H).tolist() == [1]
    fill(wb, "ev", batch([H], [0], offset=1))
    fill(wb, "other", batch([H], [0], offset=1))
    # Both reads see the second event: each append dropped its own stream's cached events.
    assert wb.read(f.key, cf, np.array([0]), H).tolist() == [2]
    assert wb.read(g.key, cg, np.array([0]), H).tolist() == [2]


def test_snapshot_round_trip_keeps_buffers_windows_and_local_max():
    f = feat("sx_2h", "2h", agg="sum", column="x")
    wb = WindowBuffers({f.key: f})
    rng = np.random.default_rng(7)
    for i in range(5):
        ts = sorted(rng.integers(0, 6 * H, 20).tolist())
        fill(wb, "ev", batch(ts, rng.integers(0, 4, 20).tolist(), offset=i, x=rng.random(20).tolist()))
    meta, entries = wb.to_snapshot()
    again = WindowBuffers({f.key: f})
    again.restore({k: dict(v) for k, v in meta.items()}, entries, {"ev": None})
    cf = compile_feature(f, "num")
    slots = np.arange(-1, 5)
    wm = wb.local_max["ev"]
    assert again.local_max == wb.local_max and not again.is_stale("ev")
    np.testing.assert_array_equal(again.read(f.key, cf, slots, wm), wb.read(f.key, cf, slots, wm))
    # A stream no longer defined is not restored.
    gone = WindowBuffers({f.key: f})
    gone.restore(meta, entries, {})
    assert gone.merged("ev") == {}


# ------------------------------------------------------------------------------------------------ ReplayCache
class Shard:
    """A real log of records and the decoding a shard applies (one shard owning every key)."""

    def __init__(self, path) -> None:
        self.log = SegmentedLog(str(path), durability="none")
        self.keys = KeyIndex()
        self.decoded = 0

    def write(self, stream: str, users: list[str], ts: list[int]) -> tuple[dict, int]:
        """Log a batch; returns the record and its offset."""
        cols = {TS: np.array(ts, dtype=np.int64), "user": np.array(users, dtype=object)}
        record = {"stream": stream, "batch_id": str(self.log.next_offset), "cols": encode_batch(cols)}
        return record, self.log.append(record)

    def decode(self, record: dict, offset: int) -> Batch:
        self.decoded += 1
        cols = decode_batch(record["cols"])
        n = len(cols[TS])
        cols[SEQ] = (np.int64(offset) << np.int64(SEQ_ROW_BITS)) + np.arange(n, dtype=np.int64)
        cols[SLOT] = self.keys.lookup(cols["user"], add=True)
        return cols


def brute_counts(events: list[tuple[str, int]], users: list[str], t: list[int]) -> list[int]:
    """Events of each observation's user strictly before its time (the point-in-time rule)."""
    return [sum(1 for u, ts in events if u == user and ts < at) for user, at in zip(users, t, strict=True)]


@pytest.fixture
def shard(tmp_path):
    s = Shard(tmp_path / "log")
    yield s
    s.log.close()


def test_events_from_the_log_skip_old_batches_before_decoding(shard):
    shard.write("ev", ["a", "b"], [0, 5])
    shard.write("other", ["a"], [100])
    shard.write("ev", ["a"], [50])
    rc = ReplayCache(shard.log, shard.decode)
    assert not rc.loaded and rc.parts("ev") is None
    got = list(rc.events("ev", since=10))
    assert [c[TS].tolist() for c in got] == [[50]]
    assert shard.decoded == 1  # the batch entirely before 10 and the other stream were never decoded
    assert [c[TS].tolist() for c in rc.events("ev")] == [[0, 5], [50]]
    assert not rc.loaded  # reading events does not load the cache


def test_replay_loads_once_and_follows_new_batches(shard):
    rng = np.random.default_rng(3)
    events: list[tuple[str, int]] = []
    for _ in range(3):
        users = [f"u{i}" for i in rng.integers(0, 4, 10)]
        ts = rng.integers(0, 100, 10).tolist()
        shard.write("ev", users, ts)
        events += list(zip(users, ts, strict=True))
    rc = ReplayCache(shard.log, shard.decode)
    cf = compile_feature(feat("n"), None)
    obs_users = [f"u{i}" for i in range(5)]
    obs_t = rng.integers(0, 120, 5).tolist()

    def replay() -> list[int]:
        rc.load()  # decoding gives the keys their slots
        slots = shard.keys.lookup(np.array(obs_users, dtype=object), add=False)
        (vals,), n = rc.replay("ev", "user", [cf], slots, np.array(obs_t, dtype=np.int64))
        assert n == len(events)
        return vals.tolist()

    assert replay() == brute_counts(events, obs_users, obs_t)
    assert rc.loaded and len(rc.parts("ev")) == 1  # loaded as one concatenated batch
    decoded = shard.decoded
    # A batch added after the index was built is seen by the next replay (its index is rebuilt).
    rc.add("ev", shard.decode(*shard.write("ev", ["u4", "u0"], [1, 2])))
    events += [("u4", 1), ("u0", 2)]
    assert replay() == brute_counts(events, obs_users, obs_t)
    assert shard.decoded == decoded + 1  # the log was not read again


def test_many_small_batches_are_compacted_before_indexing(shard):
    rc = ReplayCache(shard.log, shard.decode)
    rc.start_empty()
    events = []
    for i in range(COMPACT_PARTS + 5):
        rc.add("ev", shard.decode(*shard.write("ev", ["a"], [i])))
        events.append(("a", i))
    assert len(rc.parts("ev")) == COMPACT_PARTS + 5
    cf = compile_feature(feat("n"), None)
    (vals,), n = rc.replay("ev", "user", [cf], np.array([0, 0]), np.array([10, 1000]))
    assert len(rc.parts("ev")) == 1 and n == len(events)
    assert vals.tolist() == brute_counts(events, ["a", "a"], [10, 1000])


def test_read_log_reads_the_files_not_the_cache(shard):
    shard.write("ev", ["a"], [1])
    rc = ReplayCache(shard.log, shard.decode)
    rc.start_empty()  # an empty cache: read_log must not answer from it
    fresh = rc.read_log()
    assert list(fresh) == ["ev"] and fresh["ev"][0][TS].tolist() == [1]
    assert rc.parts("ev") == []



@pytest.mark.parametrize("agg,column", [("count", None), ("sum", "x"), ("max", "x"), ("last", "x"),
                                        ("count_distinct", "x"), ("last_k", "x")])
def test_runs_kept_across_appends_fold_like_a_fresh_sort_of_the_buffer(agg, column):
    """Reads after every append (batches out of time order, expiry included) equal a fold of the merged
    buffer sorted afresh, and ``expiring`` names every key whose value changes as the window moves on."""
    rng = np.random.default_rng(7)
    f = Feature(name="w", stream="ev", entity="user", agg=agg, column=column, window="2h",
                **({"k": 3} if agg == "last_k" else {}))
    wb = WindowBuffers({f.key: f})
    cf = compile_feature(f, "num" if column else None)
    slots = np.arange(-1, 12)
    wm = None
    for offset in range(60):
        n = int(rng.integers(1, 40))
        ts = (offset * H // 4 + rng.integers(-H, H // 2, n)).tolist()  # late events too
        fill(wb, "ev", batch(ts, rng.integers(0, 11, n).tolist(), offset, x=rng.integers(0, 5, n).tolist()))
        old, wm = wm, max(wm if wm is not None else ts[0], max(ts))
        got = wb.read(f.key, cf, slots, wm)
        fresh = WindowEvents(cf, wb.merged("ev"))
        assert [repr(v) for v in got] == [repr(v) for v in fresh.fold(slots, wm + 1 - f.window_us)]
        if old is not None:
            before = fresh.fold(slots, old + 1 - f.window_us)  # the same events, the old window start
            changed = {int(s) for s, a, b in zip(slots, before, got, strict=True) if repr(a) != repr(b)}
            assert changed <= set(wb.expiring(f.key, cf, old, wm).tolist())
    assert len(wb._runs[f.key]) <= 8  # merged as they accumulate: O(log n) runs
