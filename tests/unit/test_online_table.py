"""rayfs.storage.online: the LMDB online table a shard writes and same-node processes read."""

from __future__ import annotations

import math
import multiprocessing as mp

import numpy as np
import pytest

from rayfs.storage.online import OnlineReader, OnlineTable, rows_to_values


def _meta(k: int) -> dict:
    return {"watermark": {"ev": k}, "cv": 1, "offset": k}


def test_round_trip_keeps_int_and_str_keys_apart(tmp_path):
    table = OnlineTable(tmp_path / "online")
    table.write([("ev", "k", ["n", "s"], [1, "1", -(2**63)], [[3, 4, 5], ["a", None, "c"]])], _meta(7))
    reader = table
    meta, rows = reader.read([("ev", "k", [1, "1", -(2**63), 2, "nobody"])])
    assert meta["layouts"] == {"ev\x1fk": ["n", "s"]} and meta["watermark"] == {"ev": 7}
    assert rows == [[[3, "a"], [4, None], [5, "c"], None, None]]


def test_values_of_every_kind_survive(tmp_path):
    table = OnlineTable(tmp_path / "o")
    table.write([("ev", "k", ["f", "l", "t"], ["a"], [[float("nan")], [["x", 1]], [[{"value": 1, "count": 2}]]])],
                _meta(1))
    (row,), = table.read([("ev", "k", ["a"])])[1]
    assert math.isnan(row[0]) and row[1] == ["x", 1] and row[2] == [{"value": 1, "count": 2}]


def test_long_and_surrogate_keys(tmp_path):
    table = OnlineTable(tmp_path / "o")
    long_a, long_b = "a" * 5000, "a" * 4999 + "b"
    table.write([("ev", "k", ["n"], [long_a, "\ud800"], [[1, 2]])], _meta(1))
    reader = table
    assert reader.read([("ev", "k", [long_a, long_b, "\ud800"])])[1] == [[[1], None, [2]]]


def test_a_new_layout_replaces_the_groups_rows(tmp_path):
    table = OnlineTable(tmp_path / "o")
    table.write([("ev", "k", ["a"], ["x", "y"], [[1, 2]]), ("ev", "p", ["b"], [1], [[9]])], _meta(1))
    table.write([("ev", "k", ["a", "c"], ["x"], [[1], [5]])], _meta(2))
    meta, rows = table.read([("ev", "k", ["x", "y"]), ("ev", "p", [1])])
    assert meta["layouts"] == {"ev\x1fk": ["a", "c"], "ev\x1fp": ["b"]}
    assert rows == [[[1, 5], None], [[9]]]  # "y" was written under the old layout: gone


def test_clear(tmp_path):
    table = OnlineTable(tmp_path / "o")
    table.write([("ev", "k", ["a"], ["x"], [[1]])], _meta(1))
    table.clear()
    assert table.read([("ev", "k", ["x"])]) == ({}, [[None]])


def _read_loop(path: str, keys: list, rounds: int, out) -> None:
    reader = OnlineReader(path)
    torn = seen = 0
    for _ in range(rounds):
        meta, (rows,) = reader.read([("ev", "k", keys)])
        values = {r[0] for r in rows if r is not None}
        if meta:
            seen += 1
            # Every row and the meta entry come from the same batch.
            torn += values != {meta["offset"]}
    out.put((seen, torn))


@pytest.mark.timeout(120)
def test_readers_in_other_processes_see_whole_batches(tmp_path):
    path = str(tmp_path / "o")
    table = OnlineTable(path)
    keys = [f"u{i}" for i in range(500)]
    table.write([("ev", "k", ["v"], keys, [[0] * len(keys)])], _meta(0))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_read_loop, args=(path, keys, 300, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for k in range(1, 400):
        table.write([("ev", "k", ["v"], keys, [[k] * len(keys)])], _meta(k))
    results = [out.get(timeout=100) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(seen == 300 for seen, _ in results)
    assert all(torn == 0 for _, torn in results)


def _values(table, group, keys, names):
    meta, rows = table.read_raw([(*group, keys)])
    return rows_to_values(meta, {group[0]: names}, group[1], rows)


def test_numeric_rows_are_packed_and_read_back_with_their_types(tmp_path):
    table = OnlineTable(tmp_path / "o")
    n = np.array([3, 0, -(2**63)], dtype=np.int64)
    x = np.array([1.5, float("nan"), -0.0])
    b = np.array([True, False, True])
    s = np.array(["a", None, "ü"], dtype=object)
    table.write([("ev", "k", ["n", "x", "b", "s"], ["a", "b", "c"], [n, x, b, s])], _meta(1))
    meta, (rows,) = table.read([("ev", "k", ["a", "c", "zz"])])
    assert meta["codecs"]["ev\x1fk"] == ["<i8", "<f8", "|b1", "o"]
    assert rows[0] == [3, 1.5, True, "a"] and rows[1][0] == -(2**63) and rows[2] is None
    for keys in (["b"], ["c", "nobody", "a", "b"]):  # one row (struct) and several (numpy records)
        got = _values(table, ("ev", "k"), keys, ["n", "x", "b", "s"])["values"]
        idx = [{"a": 0, "b": 1, "c": 2}[k] for k in keys if k != "nobody"]
        present, vals = got["n"]
        assert present.tolist() == [k != "nobody" for k in keys]
        assert vals.dtype == np.int64 and vals.tolist() == n[idx].tolist()
        assert got["x"][1].dtype == np.float64 and repr(got["x"][1].tolist()) == repr(x[idx].tolist())
        assert got["b"][1].dtype == bool and got["b"][1].tolist() == b[idx].tolist()
        assert got["s"][1].dtype == object and got["s"][1].tolist() == s[idx].tolist()


def test_long_keys_under_a_digest_with_numeric_rows(tmp_path):
    table = OnlineTable(tmp_path / "o")
    long_a, long_b = "a" * 5000, "a" * 4999 + "b"
    table.write([("ev", "k", ["n"], [long_a, "short"], [np.array([7, 8])])], _meta(1))
    got = _values(table, ("ev", "k"), [long_b, long_a, "short"], ["n"])["values"]["n"]
    assert got[0].tolist() == [False, True, True] and got[1].tolist() == [7, 8]
    assert table.read([("ev", "k", [long_a, long_b])])[1] == [[[7], None]]


def test_a_new_codec_replaces_the_groups_rows(tmp_path):
    table = OnlineTable(tmp_path / "o")
    table.write([("ev", "k", ["a"], ["x", "y"], [np.array([1, 2])])], _meta(1))
    table.write([("ev", "k", ["a"], ["x"], [np.array([0.5])])], _meta(2))  # int64 -> float64
    meta, rows = table.read([("ev", "k", ["x", "y"])])
    assert meta["codecs"]["ev\x1fk"] == ["<f8"] and rows == [[[0.5], None]]


def test_a_group_without_features_has_no_rows(tmp_path):
    table = OnlineTable(tmp_path / "o")
    assert table.write([("ev", "p", [], [1, 2, 3], [])], _meta(1)) == 0
    meta, rows = table.read([("ev", "p", [1])])
    assert meta["layouts"]["ev\x1fp"] == [] and rows == [[None]]
