"""rayfs.storage.online: the LMDB online table a shard writes and same-node processes read."""

from __future__ import annotations

import math
import multiprocessing as mp

import pytest

from rayfs.storage.online import OnlineReader, OnlineTable


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
