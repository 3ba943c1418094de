"""Errors at the driver side of a store: each is a RayfsError saying what was, or will be, applied.

Pinned: a Ray Data ingest refused part-way raises the worker's own RayfsError (not Ray's wrapper), naming
the column and row, and says how many rows of the dataset were applied (whole batches only); a store
stopped by another driver gives a StoreClosedError from every call, and an ingest refused that way says
its batch will be applied on the next open and how to retry it without counting it twice; a closed
handle refuses every call; keys given as a generator are read once.
"""

from __future__ import annotations

import re
import uuid

import numpy as np
import pandas as pd
import pytest
import ray

import rayfs
from rayfs.errors import StoreClosedError, TimestampError


def _store(tmp_path, **kwargs):
    s = rayfs.FeatureStore.open(tmp_path / "s", shards=1, **kwargs)
    s.register_stream("ev", entities=["k"], timestamp="ts")
    s.register_sql("SELECT k, COUNT(*) AS n FROM ev GROUP BY k")
    return s


def _count(store, key="a") -> int:
    return int(store.get_features("k", [key], ["n"])["n"][0])


def test_keys_may_be_a_generator(tmp_path):
    s = _store(tmp_path)
    try:
        s.ingest("ev", pd.DataFrame({"k": ["a", "b", "a"], "ts": [1.0, 2.0, 3.0]}))
        out = s.get_features("k", (k for k in ["a", "b", "c"]), ["n"])
        assert out["k"].tolist() == ["a", "b", "c"] and out["n"].tolist() == [2, 1, 0]
    finally:
        s.close()


def test_ray_data_ingest_refused_part_way_names_row_column_and_what_was_applied(tmp_path):
    s = _store(tmp_path)
    try:
        n = 150_000
        ts = np.arange(n, dtype=float) + 10
        ts[140_000] = np.nan
        ds = ray.data.from_pandas(pd.DataFrame({"k": ["a"] * n, "ts": ts}))
        with pytest.raises(TimestampError) as info:
            s.ingest("ev", ds)
        err = info.value
        assert "'ts'" in str(err) and "row 40000" in str(err)
        note = " ".join(getattr(err, "__notes__", []))
        applied = int(re.search(r"([\d,]+) rows in \d+ whole batches", note).group(1).replace(",", ""))
        # One whole batch of 100,000 rows, never a part of the refused one.
        assert applied == _count(s) == 100_000
    finally:
        s.close()


def test_a_store_stopped_by_another_driver_refuses_every_call_plainly(tmp_path):
    name = f"stopped_{uuid.uuid4().hex[:8]}"
    a = _store(tmp_path, name=name)
    a.ingest("ev", pd.DataFrame({"k": ["a"], "ts": [1.0]}))  # column kinds known: a later ingest is logged
    rayfs.connect(name).stop()
    with pytest.raises(StoreClosedError) as info:
        a.ingest("ev", pd.DataFrame({"k": ["a"], "ts": [2.0]}))
    note = " ".join(getattr(info.value, "__notes__", []))
    assert "WILL be applied" in note
    bid = re.search(r"batch_id='([^']+)'", note).group(1)
    for call in (lambda: a.register_sql("SELECT k, COUNT(*) AS m FROM ev GROUP BY k"),
                 lambda: a.get_features("k", ["a"], ["n"]), a.info, a.stats, a.flush,
                 lambda: a.training_set(pd.DataFrame({"k": ["a"], "ts": [9.0]}))):
        with pytest.raises(StoreClosedError):
            call()
    a.close()
    b = rayfs.FeatureStore.open(tmp_path / "s", shards=1, name=name)
    try:
        assert _count(b) == 2  # the refused batch was in the write-ahead log: applied on open, as promised
        b.ingest("ev", pd.DataFrame({"k": ["a"], "ts": [2.0]}), batch_id=bid)  # the retry the note suggests
        assert _count(b) == 2
    finally:
        b.stop()


def test_a_closed_handle_refuses_every_call(tmp_path):
    s = _store(tmp_path)
    s.close()
    for call in (s.info, s.stats, s.flush, lambda: s.observations("lab"), lambda: s.get_features("k", ["a"]),
                 lambda: s.ingest("ev", pd.DataFrame({"k": ["a"], "ts": [1.0]})), s.list_features):
        with pytest.raises(StoreClosedError):
            call()
