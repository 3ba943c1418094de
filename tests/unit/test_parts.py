"""Tests of rayfs.engine.parts, the pure ingest logic: normalising input, splitting, ownership, parts, digests.

Parts are checked against a row-by-row reference built from ``routing.shard_of`` of the decoded keys, and by
folding them on real shard cores (with and without the ownership bits) into the same state.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rayfs.engine import columns as C
from rayfs.engine import parts as P
from rayfs.engine.fold import TS
from rayfs.engine.routing import shard_of
from rayfs.errors import SchemaError
from rayfs.model.definitions import Feature, Stream
from rayfs.shard.core import ShardCore
from rayfs.storage.catalog import Catalog
from tests.unit.test_shardcore import FEATS, STREAM, assert_same, batches, events, read_all, record

TWO = Stream(name="ev", entities=("user", "item"), timestamp="ts")


def catalog(tmp_path, *features: Feature, schema: dict | None = None) -> Catalog:
    cat = Catalog(str(tmp_path), 2)
    cat.streams[TWO.name] = TWO
    cat.schema[TWO.name] = dict(schema or {})
    cat.features = {f.key: f for f in features}
    return cat


def keyed_frame(seed: int, n: int) -> pd.DataFrame:
    """Two entity fields mixing ints, strings and nulls (some rows with every key null), and a value."""
    rng = np.random.default_rng(seed)
    pool = np.array([f"u{i}" for i in range(9)] + [3, 7, 11, None], dtype=object)
    user = pool[rng.integers(0, len(pool), n)]
    item = np.array([f"i{i}" for i in range(5)] + [None], dtype=object)[rng.integers(0, 6, n)]
    user[:3] = None
    item[:3] = None  # rows 0..2 have no key at all
    return pd.DataFrame({"user": pd.Series(user, dtype=object), "item": pd.Series(item, dtype=object),
                         "ts": 1_700_000_000 + rng.integers(0, 10_000, n), "x": rng.normal(size=n)})


def wire_record(df: pd.DataFrame, bid: str = "b") -> dict:
    cols = {TS: C.timestamps(df["ts"], what="ts"),
            "user": C.key_column(df["user"], what="user", coded=True),
            "item": C.key_column(df["item"], what="item", coded=True),
            "x": C.value_column(df["x"], what="x")}
    return {"stream": "ev", "batch_id": bid, "cols": C.encode_batch(cols)}, cols


# ---------------------------------------------------------------------------------------------- is_batches
def test_is_batches():
    df = pd.DataFrame({"a": [1]})
    assert not P.is_batches(df) and not P.is_batches({"a": np.arange(3)}) and not P.is_batches([{"a": 1}, {"a": 2}])
    assert not P.is_batches([]) and not P.is_batches(pa.table({"a": [1]}))
    assert P.is_batches([df, df]) and P.is_batches((pa.table({"a": [1]}),)) and P.is_batches([{"a": np.arange(3)}])
    assert P.is_batches(iter([df])) and P.is_batches(b for b in [df])


# ---------------------------------------------------------------------------------------------- owners
@pytest.mark.parametrize("n_shards", [1, 3, 20])
def test_owners_equal_shard_of_the_decoded_keys(n_shards):
    rec, cols = wire_record(keyed_frame(1, 500))
    for e in TWO.entities:
        want = shard_of(C.decode(rec["cols"][e]), n_shards)
        assert (P.owners(rec["cols"][e], None, n_shards) == want).all(), e
        assert (P.owners(rec["cols"][e], cols[e], n_shards) == want).all(), e
        assert (want[:3] == -1).all()  # null keys belong to no shard


def test_owners_of_integer_keys():
    keys = C.key_column(pd.Series(np.arange(-50, 50, dtype=np.int64)), what="k", coded=True)
    wire = C.encode(keys)
    assert (P.owners(wire, None, 5) == shard_of(keys, 5)).all()


# ---------------------------------------------------------------------------------------------- make_parts
@pytest.mark.parametrize("n_shards", [1, 2, 5, 17])  # 17: the scatter-into-a-matrix path
@pytest.mark.parametrize("given_cols", [False, True])
def test_parts_against_a_row_by_row_reference(n_shards, given_cols):
    df = keyed_frame(n_shards, 400)
    rec, cols = wire_record(df, "b7")
    parts = P.make_parts(rec, TWO.entities, n_shards, cv=9, cols=cols if given_cols else None)
    assert len(parts) == n_shards
    owner = {e: shard_of(C.decode(rec["cols"][e]), n_shards) for e in TWO.entities}
    keyless = (owner["user"] < 0) & (owner["item"] < 0)
    wm = int(C.decode(rec["cols"][TS]).max())
    seen = np.zeros(len(df), dtype=int)
    for j, part in enumerate(parts):
        assert list(part) == ["stream", "batch_id", "wm", "cv", "cols", "own"]  # the wire format
        assert (part["stream"], part["batch_id"], part["wm"], part["cv"]) == ("ev", "b7", wm, 9)
        rows = (owner["user"] == j) | (owner["item"] == j) | (keyless & (j == 0))
        seen += rows
        got = C.decode_batch(part["cols"])
        want = C.take(C.decode_batch(rec["cols"]), np.flatnonzero(rows))  # rows keep the batch's order
        assert list(got) == list(want)
        for c in want:
            assert got[c].tolist() == want[c].tolist(), (j, c)
        assert set(part["own"]) == set(TWO.entities)
        for e in TWO.entities:
            bits = np.unpackbits(np.frombuffer(part["own"][e], dtype=np.uint8))[:rows.sum()].astype(bool)
            assert (bits == (owner[e][rows] == j)).all(), (j, e)
        if rows.all():
            assert part["cols"] is rec["cols"]  # the whole batch: the record's columns themselves
    assert (seen >= 1).all()  # every row is somewhere; a row with two owners goes to both


def test_every_shard_gets_a_part_with_the_watermark_even_without_rows():
    df = pd.DataFrame({"user": ["a", "a"], "item": ["z", "z"], "ts": [5, 9], "x": [1.0, 2.0]})
    rec, _ = wire_record(df)
    parts = P.make_parts(rec, TWO.entities, 8, cv=0)
    sizes = [len(C.decode(p["cols"][TS])) for p in parts]
    assert sum(sizes) in (2, 4) and sizes.count(0) >= 6
    assert {p["wm"] for p in parts} == {9_000_000}


def test_owned_key_bits_give_the_slots_the_shard_would_compute(tmp_path):
    """Folding parts with the ownership bits, or without them (records of older drivers, where the shard hashes
    new keys itself), gives the same keys, slots, values and recovery."""
    n_shards = 3
    df = events(17, 900)
    df.loc[[3, 4], ["user"]] = None  # rows with one null key
    records = [record(b, f"b{i}") for i, b in enumerate(batches(df, 70))]
    for j in range(n_shards):
        cores = {}
        for mode in ("bits", "plain"):
            c = ShardCore(str(tmp_path / mode), j, n_shards, [STREAM.to_dict()], [f.to_dict() for f in FEATS],
                          durability="none", snapshot_every=5)
            for r in records:
                part = P.make_parts(r, STREAM.entities, n_shards, cv=0)[j]
                assert set(part["own"]) == set(STREAM.entities)
                if mode == "plain":
                    del part["own"]
                c.ingest(part)
            cores[mode] = c
        a, b = cores["bits"], cores["plain"]
        for e in STREAM.entities:
            assert a.keys[("ev", e)].keys() == b.keys[("ev", e)].keys(), (j, e)
        assert_same(read_all(a, df), read_all(b, df), context=f"shard {j}")
        before = read_all(a, df)
        a.close()
        b.close()
        again = ShardCore(str(tmp_path / "bits"), j, n_shards, [STREAM.to_dict()], [f.to_dict() for f in FEATS],
                          durability="none")
        assert_same(read_all(again, df), before, context=f"shard {j} reopened")
        again.close()


# ---------------------------------------------------------------------------------------------- split
def test_split_keeps_a_small_batch_whole():
    cols = {TS: np.arange(5, dtype=np.int64), "x": np.arange(5.0)}
    assert [(bid, got is cols) for bid, got in P.split(cols, "b")] == [("b", True)]


def test_split_cuts_a_long_batch_into_numbered_chunks(monkeypatch):
    monkeypatch.setattr(P, "MAX_BATCH_ROWS", 4)
    cols = {TS: np.arange(10, dtype=np.int64), "x": np.arange(10.0)}
    chunks = list(P.split(cols, "b"))
    assert [bid for bid, _ in chunks] == ["b#0", "b#1", "b#2"]
    assert [c["x"].tolist() for _, c in chunks] == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0]]


# ---------------------------------------------------------------------------------------------- content_digest
def test_digest_ignores_how_an_all_null_column_was_normalised():
    ts = np.array([1, 2], dtype=np.int64)
    as_nan = {TS: ts, "c": np.array([np.nan, np.nan])}
    as_none = {TS: ts, "c": np.array([None, None], dtype=object)}
    assert P.content_digest(as_nan) == P.content_digest(as_none)
    assert P.content_digest(as_nan) != P.content_digest({TS: ts, "c": np.array([np.nan, 1.0])})
    assert P.content_digest(as_nan) != P.content_digest({TS: ts[::-1].copy(), "c": np.array([np.nan, np.nan])})


# ---------------------------------------------------------------------------------------------- normalise
def test_normalise_reports_first_seen_kinds(tmp_path):
    cat = catalog(tmp_path, schema={"user": "str"})
    df = pd.DataFrame({"user": ["a", "b"], "item": [1, 2], "ts": [1.0, 2.0], "x": [0.5, None], "s": [None, None]})
    cols, kinds, changed = P.normalise(TWO, cat, df)
    assert list(cols) == [TS, "user", "item", "x", "s"]
    assert cols[TS].tolist() == [1_000_000, 2_000_000]
    assert kinds == {"user": "str", "item": "num", "x": "num", "s": None}
    assert changed == {"item": "num", "x": "num", "s": None}  # user is known; s is all null: seen, no kind yet
    cat.null_columns["ev"] = ["s"]
    assert P.normalise(TWO, cat, df)[2] == {"item": "num", "x": "num"}  # s reported once


def test_normalise_marks_keys_of_a_new_type_mixed(tmp_path):
    cat = catalog(tmp_path, schema={"user": "str"})
    _, kinds, changed = P.normalise(TWO, cat, pd.DataFrame({"user": [1], "item": ["i"], "ts": [1.0]}))
    assert kinds["user"] == "mixed" and changed["user"] == "mixed"


@pytest.mark.parametrize(("data", "match"), [
    (pd.DataFrame({"user": [], "item": [], "ts": []}), "'ev': empty batch"),
    (pd.DataFrame({"user": ["a"], "ts": [1.0]}), "'ev': batch lacks column 'item'"),
    (pd.DataFrame({"user": ["a"], "item": ["i"], "ts": [1.0]}), "lacks column 'x' used by feature 'sx'"),
    (pd.DataFrame({"user": ["a"], "item": ["i"], "ts": [1.0], "x": [1.0], "__y": [1]}), "bad column name '__y'"),
    (pd.DataFrame({"user": ["a"], "item": ["i"], "ts": [1.0], "x": ["s"]}), "column 'x': holds str values"),
])
def test_normalise_refuses_bad_input_naming_stream_and_column(tmp_path, data, match):
    cat = catalog(tmp_path, Feature(name="sx", stream="ev", entity="user", agg="sum", column="x"),
                  schema={"x": "num"})
    with pytest.raises(SchemaError, match=match):
        P.normalise(TWO, cat, data)


def test_normalise_refuses_a_first_kind_a_feature_cannot_read(tmp_path):
    cat = catalog(tmp_path, Feature(name="sx", stream="ev", entity="user", agg="sum", column="x"))
    with pytest.raises(SchemaError, match="'sx'"):
        P.normalise(TWO, cat, pd.DataFrame({"user": ["a"], "item": ["i"], "ts": [1.0], "x": ["text"]}))
