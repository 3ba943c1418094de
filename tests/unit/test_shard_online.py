"""The shard's online table (no Ray): after every batch, definition change and restart, every key's row
equals what ShardCore.get answers, windows whose events expire as time moves on included."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rayfs.engine.columns import key_column
from rayfs.storage.online import OnlineReader
from tests.unit.test_shardcore import (
    FEATS,
    ITEM_KEYS,
    USER_KEYS,
    batches,
    core,
    events,
    feat,
    record,
    stop_without_snapshot,
)


def _same(a, b) -> bool:
    return repr(a) == repr(b)


def assert_table_matches(c, feats=FEATS, context="") -> int:
    """Every feature of ``feats`` for every probe key: the table's value equals ShardCore.get's; returns
    the number of keys the table had a row for."""
    rows = 0
    for entity, keys in (("user", USER_KEYS), ("item", ITEM_KEYS)):
        names = [f.key for f in feats if f.entity == entity]
        k = key_column(pd.Series(keys, dtype=object), what="keys")
        want = c.get(entity, k, names)["values"]
        got = c.online_view.read(entity, k.tolist(), names)
        assert got is not None, f"{context}: features missing from the table"
        empty = c.get(entity, key_column(pd.Series(["never seen"], dtype=object), what="k"), names)["values"]
        for n in names:
            present, values = got["values"][n]
            assert [repr(v) for v in want[n][present].tolist()] == [repr(v) for v in values.tolist()], \
                f"{context} {entity} {n}"
            if len(values):  # the table keeps the shard's value types (int64 counts, float64, objects)
                assert values.dtype == want[n].dtype, f"{context} {entity} {n}"
            for v in want[n][~present].tolist():  # no row: the key's value is the empty value
                assert _same(v, empty[n].tolist()[0]), f"{context} {entity} {n}: {v!r} without a row"
            rows += int(present.sum())
    return rows


def test_table_equals_get_after_every_batch_out_of_order(tmp_path):
    df = events(3, 300).sample(frac=1.0, random_state=4)  # shuffled: late events, expiring windows
    c = core(tmp_path, online_table=True, snapshot_every=5)
    for i, b in enumerate(batches(df, 17)):
        c.ingest(record(b, f"b{i}"))
        rows = assert_table_matches(c, context=f"after batch {i}")
    assert rows > 0
    c.close()


def test_windows_expire_in_the_table_when_only_time_moves_on(tmp_path):
    """A batch whose events belong to other keys (or an empty part carrying only a newer watermark) still
    updates the rows of keys whose windowed events left the window."""
    c = core(tmp_path, online_table=True)
    early = pd.DataFrame({"user": ["u0", "u1"], "item": [0, 1], "ts": [1_700_000_000, 1_700_000_100],
                          "x": [1.0, 2.0], "s": ["p", "q"]})
    c.ingest(record(early, "a"))
    later = pd.DataFrame({"user": ["u2"], "item": [2], "ts": [1_700_000_000 + 2 * 86400], "x": [3.0], "s": ["r"]})
    c.ingest(record(later, "b"))
    assert_table_matches(c, context="after time moved on")
    meta, (rows,) = c.online_view.table.read([("ev", "user", ["u0"])])
    n_6h = rows[0][meta["layouts"]["ev\x1fuser"].index("n_6h")]
    assert n_6h == 0  # u0's only event is 2 days old: out of the 6h window, though u0 had no new event
    empty = {"stream": "ev", "batch_id": "c", "cols": record(later.iloc[:0], "c")["cols"],
             "wm": (1_700_000_000 + 3 * 86400) * 1_000_000}
    c.ingest(empty)  # only a watermark (another shard's rows)
    assert_table_matches(c, context="after a watermark-only part")
    c.close()


def test_definitions_and_restarts_keep_the_table_exact(tmp_path):
    df = events(5, 240)
    parts = batches(df, 40)
    c = core(tmp_path, online_table=True, feats=FEATS[:4])
    for i, b in enumerate(parts[:3]):
        c.ingest(record(b, f"b{i}"))
    late = [feat("late_max", "max", "x"), feat("late_cd_1d", "count_distinct", "s", window="1d")]
    for f in late:
        c.add_feature(f.to_dict())  # backfilled: the group is rewritten with its new layout
    feats = FEATS[:4] + late
    assert_table_matches(c, feats, "after backfill")
    c.drop_feature("sx")
    feats = [f for f in feats if f.name != "sx"]
    assert_table_matches(c, feats, "after drop")
    c.ingest(record(parts[3], "b3"))
    c.close()
    c = core(tmp_path, online_table=True, feats=feats)  # a clean reopen keeps the table as it is
    assert_table_matches(c, feats, "after reopen")
    c.ingest(record(parts[4], "b4"))
    stop_without_snapshot(c)  # a crash: the table must be rebuilt to what recovery restores
    c = core(tmp_path, online_table=True, feats=feats)
    assert_table_matches(c, feats, "after crash")
    c.close()


def test_a_reader_sees_the_shards_table(tmp_path):
    """The read-only reader other processes use (here the same files through a second environment handle
    is not allowed by LMDB in one process, so the shard's own read stands in for the values)."""
    c = core(tmp_path, online_table=True)
    c.ingest(record(events(2, 50), "a"))
    path = c.online_view.path
    c.close()
    reader = OnlineReader(path)
    meta, (rows,) = reader.read([("ev", "user", ["u0", "nobody"])])
    assert meta["offset"] == 1 and rows[1] is None and rows[0] is not None
    assert np.isfinite(meta["watermark"]["ev"])
    reader.close()


def test_the_audit_sees_a_table_that_disagrees_with_the_log(tmp_path):
    c = core(tmp_path, online_table=True, feats=FEATS[:3])
    c.ingest(record(events(6, 80), "a"))
    keys = key_column(pd.Series(["u0", "u1", "never"], dtype=object), what="keys")
    names = [f.key for f in FEATS[:3] if f.entity == "user"]

    def mismatches(res) -> dict:
        return {n: [i for i, (a, b) in enumerate(zip(res["online"][n], res["replay"][n], strict=True))
                    if repr(np.asarray(a).tolist()) != repr(np.asarray(b).tolist())] for n in names}

    assert mismatches(c.inspection.audit("user", keys, names)) == {n: [] for n in names}
    meta, (rows,) = c.online_view.table.read([("ev", "user", ["u0"])])
    layout = meta["layouts"]["ev\x1fuser"]
    wrong = list(rows[0])
    wrong[layout.index("n")] += 100
    c.online_view.table.write([("ev", "user", layout, ["u0"], [np.array([v]) for v in wrong])], meta)
    assert mismatches(c.inspection.audit("user", keys, names)) == {"n": [0], "n_6h": [], "sx": []}
    c.close()
