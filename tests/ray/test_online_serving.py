"""Online reads from the shards' online tables, through Ray: read on the shards' node straight from LMDB,
through the shard actors without their lock, and with the table turned off, all equal to the oracle after
every batch of shuffled ingest (windows expiring as time moves on included)."""

from __future__ import annotations

import numpy as np
import pandas as pd

import rayfs
from rayfs.store.reads import REMOTE_TABLE, LocalTables
from rayfs.testing import assert_features_equal, oracle_online

DAY = 86_400
T0 = 1_704_067_200
EV = rayfs.Stream(name="ev", entities=("user",), timestamp="ts")
FEATS = [rayfs.Feature(name="n", stream="ev", entity="user", agg="count"),
         rayfs.Feature(name="n_1d", stream="ev", entity="user", agg="count", window="1d"),
         rayfs.Feature(name="mx_6h", stream="ev", entity="user", agg="max", column="x", window="6h"),
         rayfs.Feature(name="last_s", stream="ev", entity="user", agg="last", column="s"),
         rayfs.Feature(name="top_s", stream="ev", entity="user", agg="top_k", column="s", k=2)]
USERS = [f"u{i}" for i in range(12)] + [7, "nobody"]


def _events(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = np.array([f"u{i}" for i in range(12)] + [7], dtype=object)
    return pd.DataFrame({"user": pd.Series(users[rng.integers(0, len(users), n)], dtype=object),
                         "ts": T0 + rng.integers(0, 6 * DAY, n) // 3600 * 3600,
                         "x": np.where(rng.random(n) < 0.1, np.nan, rng.integers(0, 9, n).astype(float)),
                         "s": pd.Series(np.array(["a", "b", "c", None], dtype=object)[rng.integers(0, 4, n)],
                                        dtype=object)})


def _open(path, online_table: bool):
    store = rayfs.FeatureStore.open(path, shards=2, online_table=online_table)
    store.register_stream("ev", entities=["user"], timestamp="ts")
    for f in FEATS:
        store.register_feature(f)
    return store


def test_reads_from_the_tables_the_actors_and_the_state_all_equal_the_oracle(tmp_path, monkeypatch):
    df = _events(11, 600).sample(frac=1.0, random_state=3)  # shuffled: late events, moving windows
    on, off = _open(tmp_path / "on", True), _open(tmp_path / "off", False)
    names = [f.name for f in FEATS]
    try:
        assert all(r is not None for r in on._reader._tables.readers(on._handles))  # this node: direct reads
        assert all(r is None for r in off._reader._tables.readers(off._handles))
        seen = []
        for i, lo in enumerate(range(0, len(df), 75)):
            part = df.iloc[lo:lo + 75]
            on.ingest("ev", part)
            off.ingest("ev", part)
            seen.append(part)
            want = oracle_online({"ev": pd.concat(seen)}, {"ev": EV}, FEATS, "user", USERS)
            assert_features_equal(on.get_features("user", USERS, names), want, names, context=f"table {i}")
            assert_features_equal(off.get_features("user", USERS, names), want, names, context=f"state {i}")
        with monkeypatch.context() as m:  # as from another node: the actors send their tables' rows
            m.setattr(LocalTables, "readers", lambda self, handles: [REMOTE_TABLE] * len(handles))
            assert_features_equal(on.get_features("user", USERS, names), want, names, context="actor path")
        with monkeypatch.context() as m:  # tables ignored: the shards' state answers
            m.setattr(LocalTables, "readers", lambda self, handles: [None] * len(handles))
            assert_features_equal(on.get_features("user", USERS, names), want, names, context="state path")
        assert (on.audit(1000)["mismatches"] == 0).all()
    finally:
        on.close()
        off.close()
    again = rayfs.FeatureStore.open(tmp_path / "on", online_table=True)  # the table kept or rebuilt: exact
    try:
        assert_features_equal(again.get_features("user", USERS, names), want, names, context="reopened")
    finally:
        again.close()


def test_closing_a_store_closes_its_table_readers_unless_another_handle_reads_them(tmp_path):
    """A process that opens and closes many stores must not keep every table mapped (each LMDB environment
    maps its writer's whole map size of address space)."""
    from rayfs.store import reads

    store = _open(tmp_path / "s", True)
    store.ingest("ev", _events(5, 50))
    store.get_features("user", ["u1"], "n")
    paths = [p for p in reads._OPEN if p.startswith(str(tmp_path))]
    assert len(paths) == 2
    other = reads.LocalTables(store._session)  # a second session of this process reading the same tables
    assert {id(r) for r in other.readers(store._handles)} == {id(reads._OPEN[p][0]) for p in paths}
    store.close()
    assert all(reads._OPEN[p][1] == 1 for p in paths)  # still held by the other session
    other.close()
    assert not [p for p in reads._OPEN if p.startswith(str(tmp_path))]
