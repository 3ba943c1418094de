"""Online serving with the online tables on, as the serving benchmark runs it, checked against training sets:

* after every batch of shuffled out-of-order ingest, ``get_features`` read straight from the tables and
  through the shard actors equals ``training_set`` at the newest event + 1 µs, for stored features (windows
  whose events expire as time moves on included) and on-demand features over them with request fields;
* the HTTP server, reading the same store, answers those values through real HTTP, and answers odd bodies
  (nesting deeper than the JSON parser's stack, an on-demand feature returning pandas' NA) with a 400 naming
  the nesting and a ``null``;
* once the store is stopped, readers of its tables (the HTTP server, another driver) are told so.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
import uuid

import numpy as np
import pandas as pd
import pytest

import rayfs
from rayfs.store.reads import REMOTE_TABLE, LocalTables
from rayfs.testing import assert_features_equal

T0 = 1_704_067_200  # 2024-01-01 UTC, epoch seconds
HOUR = 3_600
US = pd.Timedelta(microseconds=1)
STORED = [rayfs.Feature(name="n", stream="ev", entity="user", agg="count"),
          rayfs.Feature(name="n_2h", stream="ev", entity="user", agg="count", window="2h"),
          rayfs.Feature(name="sum_x_6h", stream="ev", entity="user", agg="sum", column="x", window="6h"),
          rayfs.Feature(name="last_s", stream="ev", entity="user", agg="last", column="s")]
USERS = [f"u{i}" for i in range(10)] + [7]
KEYS = [*USERS, "nobody", "u1"]  # an unseen key and a repeated one
NAMES = [f.name for f in STORED] + ["recent_share", "tagged"]


def recent_share(df: pd.DataFrame) -> pd.Series:
    """A ratio of a windowed feature to a lifetime one, weighted by a request field."""
    return df.n_2h / df.n.where(df.n > 0) * df.weight


def tagged(df: pd.DataFrame) -> list:
    """A string from a stored string feature and a request field (None stays None)."""
    return [None if s is None else f"{s}:{c}" for s, c in zip(df.last_s, df.city, strict=True)]


def events(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = np.empty(len(USERS), dtype=object)
    users[:] = USERS
    return pd.DataFrame({"user": pd.Series(users[rng.integers(0, len(USERS), n)], dtype=object),
                         "ts": T0 + rng.integers(0, 48 * HOUR, n) // 600 * 600,  # ties included
                         "x": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n).round(3)),
                         "s": pd.Series(np.array(["a", "b", None], dtype=object)[rng.integers(0, 3, n)],
                                        dtype=object)})


def request_fields(n: int, seed: int) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    return {"weight": rng.uniform(0.5, 2.0, n).round(3).tolist(),
            "city": [f"c{i}" for i in rng.integers(0, 3, n)]}


def open_store(path, name: str | None = None) -> rayfs.FeatureStore:
    store = rayfs.FeatureStore.open(path, shards=2, online_table=True, name=name)
    store.register_stream("ev", entities=["user"], timestamp="ts")
    for f in STORED:
        store.register_feature(f)
    store.register_on_demand("recent_share", recent_share, inputs=["n_2h", "n"], request=["weight"])
    store.register_on_demand("tagged", tagged, inputs=["last_s"], request=["city"])
    return store


def offline(store: rayfs.FeatureStore, seen: pd.DataFrame, req: dict[str, list]) -> pd.DataFrame:
    """``training_set`` at the newest event + 1 µs: what an online read must answer."""
    keys = pd.Series(KEYS, dtype=object)
    t = pd.Timestamp(int(seen["ts"].max()), unit="s") + US
    obs = pd.DataFrame({"user": keys, "ts": [t] * len(KEYS), **req})
    return store.training_set(obs, NAMES)


def test_online_tables_and_actors_equal_training_sets_after_every_batch(tmp_path, monkeypatch):
    df = events(21, 700).sample(frac=1.0, random_state=5)  # late events: windows gain and lose as time moves
    store = open_store(tmp_path / "s")
    try:
        assert all(r is not None and r is not REMOTE_TABLE for r in store._reader._tables.readers(store._handles))
        seen = []
        for i, lo in enumerate(range(0, len(df), 70)):
            part = df.iloc[lo:lo + 70]
            store.ingest("ev", part)
            seen.append(part)
            req = request_fields(len(KEYS), i)
            want = offline(store, pd.concat(seen), req)
            got = store.get_features("user", KEYS, NAMES, request=req)
            assert_features_equal(got, want, NAMES, context=f"tables, batch {i}")
            if i % 3 == 0:  # as a reader on another node: the shard actors answer from their tables
                with monkeypatch.context() as m:
                    m.setattr(LocalTables, "readers", lambda self, handles: [REMOTE_TABLE] * len(handles))
                    got = store.get_features("user", KEYS, NAMES, request=req)
                assert_features_equal(got, want, NAMES, context=f"actors, batch {i}")
        # Time moves on with another user's events only: the 2 h and 6 h windows of everyone else empty.
        late = pd.DataFrame({"user": ["u0"], "ts": [T0 + 96 * HOUR], "x": [1.0], "s": ["z"]})
        store.ingest("ev", late)
        seen.append(late)
        req = request_fields(len(KEYS), 99)
        want = offline(store, pd.concat(seen), req)
        assert (want["n_2h"].to_numpy()[1:] == 0).all()
        assert_features_equal(store.get_features("user", KEYS, NAMES, request=req), want, NAMES, context="late")
        assert (store.audit(1000)["mismatches"] == 0).all()
    finally:
        store.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, raw: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=raw, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from ray import serve

    from rayfs.serve.http import serve_http, stop_http

    name = "edges" + uuid.uuid4().hex[:8]
    store = open_store(tmp_path_factory.mktemp("served"), name=name)
    try:
        seen = events(3, 900)
        store.ingest("ev", seen)
        store.register_on_demand("label_na", lambda df: df.n.astype("string").where(df.n > 0), inputs=["n"])
        url = serve_http(name, port=_free_port())
        try:
            yield store, seen, url + "/get-online-features"
        finally:
            stop_http(name)
            serve.shutdown()
    finally:
        if store.alive():  # the last test stops it
            store.stop()


def test_http_answers_training_set_values(served):
    store, seen, url = served
    req = request_fields(len(KEYS), 7)
    want = offline(store, seen, req)
    status, doc = _post(url, json.dumps({"features": NAMES, "entities": {"user": KEYS},
                                         "request_context": req}).encode())
    assert status == 200, doc
    assert doc["metadata"]["feature_names"] == ["user", *NAMES]
    got = pd.DataFrame({n: pd.Series(r["values"], dtype=object) for n, r in zip(NAMES, doc["results"][1:],
                                                                             strict=True)})
    assert_features_equal(got, want, NAMES, context="HTTP")
    for n, r in zip(NAMES, doc["results"][1:], strict=True):
        assert r["statuses"] == ["NULL_VALUE" if v is None else "PRESENT" for v in r["values"]], n


def test_http_odd_bodies_get_a_400_or_a_null(served):
    _, _, url = served
    deep = b'{"features": ["n"], "entities": {"user": ["u1"]}, "request_context": {"weight": ' + \
        b"[" * 100_000 + b"]" * 100_000 + b"}}"
    status, doc = _post(url, deep)
    assert status == 400 and "nested too deeply" in doc["error"]["message"], doc
    status, doc = _post(url, json.dumps({"features": ["n", "label_na"], "entities": {"user": ["u1", "nobody"]}}
                                        ).encode())
    assert status == 200, doc
    n = doc["results"][1]["values"][0]
    assert n > 0 and doc["results"][2] == {"values": [str(n), None], "statuses": ["PRESENT", "NULL_VALUE"]}


def test_after_stop_readers_of_the_tables_are_told_the_store_is_gone(served):
    """Stopping the store must reach readers that read its tables without calling a shard: the HTTP server
    answers 503 (not the last values, 200, for ever) and another driver gets StoreClosedError."""
    store, _, url = served
    body = json.dumps({"features": ["n"], "entities": {"user": ["u1"]}}).encode()
    assert _post(url, body)[0] == 200
    other = rayfs.connect(store.name)
    try:
        assert other.get_features("user", ["u1"], "n")["n"].tolist() == store.get_features("user", ["u1"], "n")[
            "n"].tolist()
        store.stop()
        status, doc = _post(url, body)
        assert status == 503 and "stopped" in doc["error"]["message"], doc
        with pytest.raises(rayfs.StoreClosedError, match="stopped"):
            other.get_features("user", ["u1"], "n")
    finally:
        other.close()
