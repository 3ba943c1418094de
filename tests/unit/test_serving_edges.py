"""Serving rules checked without Ray: a body nested deeper than the JSON parser's stack is a 400 naming the
nesting; pandas' missing value ``pd.NA`` (an on-demand feature returning a nullable ``string``, ``boolean``
or ``Int64`` column) is sent as ``null`` with status ``NULL_VALUE``; an on-demand feature may return one
list per row, of one length or not; a shard that stops marks its online table closed, so readers in other
processes stop answering from it."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pandas as pd
import pytest

from rayfs.engine.columns import key_column
from rayfs.errors import OnDemandError
from rayfs.model.ondemand import OnDemandFeature
from rayfs.serve.http import FeatureServer
from rayfs.serve.protocol import HttpRequestError, OnlineRequest, column_json, encode_response, parse_request
from rayfs.storage.online import OnlineReader, rows_to_values
from tests.unit.test_shardcore import FEATS, core, events, record, stop_without_snapshot

DEPTH = 100_000  # far deeper than Python's recursion limit; the body stays under the 1 MiB limit


@pytest.mark.parametrize("field", ["features", "entities", "request_context"])
def test_deeply_nested_json_is_a_400_naming_the_nesting(field: str) -> None:
    nested = "[" * DEPTH + "]" * DEPTH
    doc = {"features": '["n"]', "entities": '{"user": ["u1"]}', "request_context": "{}"}
    doc[field] = nested if field != "request_context" else '{"b": ' + nested + "}"
    raw = ("{" + ", ".join(f'"{k}": {v}' for k, v in doc.items()) + "}").encode()
    with pytest.raises(HttpRequestError, match="nested too deeply") as info:
        parse_request(raw)
    assert info.value.status == 400


def test_the_server_answers_deep_nesting_with_a_400_before_reaching_a_store() -> None:
    server = FeatureServer("nostore", token="tok")
    raw = b'{"features": ' + b"[" * DEPTH + b"]" * DEPTH + b', "entities": {"user": ["u1"]}}'
    assert len(raw) < server.max_body
    status, payload = asyncio.run(server.handle("POST", "/get-online-features", {"authorization": "Bearer tok"}, raw))
    doc = json.loads(payload)
    assert status == 400 and "nested too deeply" in doc["error"]["message"], doc
    assert server._store is None  # refused while parsing: no store was asked


@pytest.mark.parametrize("values,want", [
    (pd.array(["a", None], dtype="string").to_numpy(), ["a", None]),
    (pd.array([True, None], dtype="boolean").to_numpy(dtype=object), [True, None]),
    (pd.array([3, None], dtype="Int64").to_numpy(dtype=object), [3, None]),
])
def test_pandas_na_is_a_null_value(values: np.ndarray, want: list) -> None:
    assert any(v is pd.NA for v in values)  # the column really holds pd.NA (pandas may change its defaults)
    out = column_json(values)
    assert out == {"values": want, "statuses": ["PRESENT", "NULL_VALUE"]}
    json.dumps(out, allow_nan=False)


def test_pandas_na_inside_lists_and_in_a_whole_response() -> None:
    nested = np.empty(2, dtype=object)
    nested[:] = [["x", pd.NA], {"k": pd.NA}]
    assert column_json(nested)["values"] == [["x", None], {"k": None}]
    req = OnlineRequest("user", ["u1", "zz"], ["label"])
    frame = pd.DataFrame({"user": ["u1", "zz"], "label": pd.array(["2", None], dtype="string")})
    doc = json.loads(encode_response(req, frame))
    assert doc["results"][1] == {"values": ["2", None], "statuses": ["PRESENT", "NULL_VALUE"]}


def _table_answer(path: str, names: list[str]) -> dict | None:
    """What a reader in another process gets from the table at ``path`` for two users (then lets go of it:
    LMDB opens an environment once per process, and the shard reopens it here)."""
    reader = OnlineReader(path)
    try:
        meta, rows = reader.read_raw([("ev", "user", ["u0", "u1"])])
        return rows_to_values(meta, {"ev": names}, "user", rows)
    finally:
        reader.close()


def test_a_stopped_shards_table_sends_readers_to_the_shard_until_a_shard_opens_it_again(tmp_path):
    """A reader in another process must not keep answering from a table no shard keeps current: after a clean
    close the table says it is closed (a reader then asks the shard, which tells it the store is gone); a
    shard opening it again clears that; a crashed shard's table is not marked (its restart updates it)."""
    names = [f.key for f in FEATS if f.entity == "user"]
    c = core(tmp_path, online_table=True)
    c.ingest(record(events(2, 60), "a"))
    path = c.online_view.path
    c.close()
    assert _table_answer(path, names) is None
    c = core(tmp_path, online_table=True)  # a clean reopen keeps the table and opens it to readers again
    keys = key_column(pd.Series(["u0", "u1"], dtype=object), what="keys")
    want = c.get("user", keys, names)["values"]
    assert c.online_view.read("user", ["u0", "u1"], names) is not None
    stop_without_snapshot(c)  # a crash: the table stays readable
    got = _table_answer(path, names)
    assert got is not None
    for n in names:
        present, values = got["values"][n]
        assert present.all() and repr(values.tolist()) == repr(want[n].tolist()), n
    c = core(tmp_path, online_table=True)
    c.ingest(record(events(3, 40), "b"))
    c.close()
    assert _table_answer(path, names) is None


@pytest.mark.parametrize("fn", [
    lambda df: [[a, 2 * a] for a in df.a],  # lists of one length (numpy alone would make a 2-D array)
    lambda df: [np.array([a, 2 * a]) for a in df.a],
    lambda df: [(a, 2 * a) for a in df.a],
    lambda df: ([a, 2 * a] for a in df.a),
    lambda df: pd.Series([[a, 2 * a] for a in df.a]),
])
def test_an_on_demand_feature_may_return_one_list_per_row(fn) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    values = OnDemandFeature(name="vec", function=fn, inputs=["a"]).apply(frame)
    assert values.shape == (3,) and values.dtype == object
    assert [list(v) for v in values] == [[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]]
    req = OnlineRequest("user", ["u1", "u2", "u3"], ["vec"])
    doc = json.loads(encode_response(req, pd.DataFrame({"user": req.keys, "vec": values})))
    assert doc["results"][1]["values"] == [[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]]


def test_a_two_dimensional_answer_is_still_refused() -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    for fn in (lambda df: np.zeros((3, 2)), lambda df: [[1.0, 2.0]]):
        with pytest.raises(OnDemandError, match=r"'vec'.*values for 3 rows"):
            OnDemandFeature(name="vec", function=fn, inputs=["a"]).apply(frame)
