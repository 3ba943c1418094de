"""The HTTP feature server through real HTTP: values equal ``get_features``, bad requests get their 4xx and
a message naming the culprit, the bearer token is enforced, and the server keeps answering after bad
requests. ``rayfs serve --config ... --http PORT`` is exercised end to end in its own process.

The in-process server runs in the session's Ray (one Serve instance, on a free port) and is shut down at
the end of the module.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pandas as pd
import pytest

import rayfs

TOKEN = "t0ken-" + uuid.uuid4().hex
MAX_KEYS = 50
T0 = 1_704_067_200  # 2024-01-01 UTC, epoch seconds
DAY = 86_400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body: bytes | None = None, *, token: str | None = TOKEN, method: str | None = None,
            timeout: float = 30.0) -> tuple[int, dict]:
    """``(status, JSON body)`` of one HTTP request (errors included)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method or ("POST" if body is not None else "GET"),
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def events(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user": [f"u{i}" for i in rng.integers(0, 40, n)],
                         "post": [f"p{i}" for i in rng.integers(0, 100, n)],
                         "x": rng.normal(size=n).round(4),
                         "ts": T0 + rng.integers(0, 10 * DAY, n)})


FEATURES = [
    rayfs.Feature(name="n", stream="ev", entity="user", agg="count"),
    rayfs.Feature(name="n_1d", stream="ev", entity="user", agg="count", window="1d"),
    rayfs.Feature(name="mean_x", stream="ev", entity="user", agg="mean", column="x"),
    rayfs.Feature(name="last_post", stream="ev", entity="user", agg="last", column="post"),
    rayfs.Feature(name="last_posts", stream="ev", entity="user", agg="last_k", column="post", k=3),
    rayfs.Feature(name="post_n", stream="ev", entity="post", agg="count"),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from ray import serve

    from rayfs.serve.http import serve_http, stop_http

    name = "http" + uuid.uuid4().hex[:8]
    store = rayfs.FeatureStore.open(tmp_path_factory.mktemp("store"), shards=2, name=name)
    try:
        store.register_stream("ev", entities=["user", "post"], timestamp="ts")
        for f in FEATURES:
            store.register_feature(f)
        store.ingest("ev", events(0, 4000))
        url = serve_http(name, port=free_port(), token=TOKEN, max_keys=MAX_KEYS)
        try:
            yield store, url
        finally:
            stop_http(name)
            serve.shutdown()
    finally:
        store.stop()


def _same(got: list, want: pd.Series) -> None:
    for g, w in zip(got, want.tolist(), strict=True):
        if isinstance(w, float) and math.isnan(w):
            assert g is None
        elif isinstance(w, float):
            assert g == pytest.approx(w, rel=1e-12)
        else:
            assert g == w


def test_values_equal_get_features(served):
    store, url = served
    keys = ["u3", "u0", "nobody", "u17", "u3"]  # an unseen key and a repeated one
    names = ["n", "n_1d", "mean_x", "last_post", "last_posts"]
    status, doc = request(url + "/get-online-features",
                          json.dumps({"features": names, "entities": {"user": keys}}).encode())
    assert status == 200, doc
    want = store.get_features("user", keys, names)
    assert doc["metadata"]["feature_names"] == ["user", *names]
    assert doc["results"][0]["values"] == keys
    for name, col in zip(names, doc["results"][1:], strict=True):
        _same(col["values"], want[name])
        nulls = [v is None for v in col["values"]]
        assert col["statuses"] == ["NULL_VALUE" if z else "PRESENT" for z in nulls]
    assert doc["results"][1]["values"][2] == 0 and doc["results"][3]["statuses"][2] == "NULL_VALUE"

    # Values follow ingest; an empty key list answers empty columns; the other entity works alike.
    store.ingest("ev", pd.DataFrame({"user": ["nobody"], "post": ["p1"], "x": [2.5], "ts": [T0 + 11 * DAY]}))
    status, doc = request(url + "/get-online-features", b'{"features": ["n", "mean_x"], "entities": {"user": '
                                                        b'["nobody"]}, "full_feature_names": false}')
    assert status == 200 and doc["results"][1]["values"] == [1] and doc["results"][2]["values"] == [2.5]
    status, doc = request(url + "/get-online-features", b'{"features": ["n"], "entities": {"user": []}}')
    assert status == 200 and doc["results"][1] == {"values": [], "statuses": []}
    status, doc = request(url + "/get-online-features", b'{"features": ["post_n"], "entities": {"post": ["p1"]}}')
    assert status == 200 and doc["results"][1]["values"] == store.get_features("post", ["p1"], "post_n")[
        "post_n"].tolist()


BAD = [
    # (body, status, words the message must contain)
    (b'{"features": ["n"], "entities": {"user": ["u1"]', 400, ["malformed JSON"]),
    (b'[1, 2]', 400, ["JSON object"]),
    (b'{"features": ["nope"], "entities": {"user": ["u1"]}}', 400, ["nope"]),
    (b'{"features": ["n@9"], "entities": {"user": ["u1"]}}', 400, ["n@9"]),
    (b'{"features": ["post_n"], "entities": {"user": ["u1"]}}', 400, ["post_n", "post"]),
    (b'{"features": ["n"], "entities": {"usr": ["u1"]}}', 400, ["'n'", "usr"]),
    (b'{"features": ["n"]}', 400, ["entities"]),
    (b'{"entities": {"user": ["u1"]}}', 400, ["features"]),
    (b'{"features": ["n"], "entities": {"user": ["u1"], "post": ["p1"]}}', 400, ["exactly one entity"]),
    (b'{"features": ["n"], "entities": {"user": "u1"}}', 400, ["entities.user", "array"]),
    (b'{"features": ["n"], "entities": {"user": ["u1", null]}}', 400, ["entities.user[1]", "null"]),
    (b'{"features": ["n"], "entities": {"user": [true]}}', 400, ["entities.user[0]", "boolean"]),
    (b'{"features": "n", "entities": {"user": ["u1"]}}', 400, ["features", "array"]),
    (b'{"features": [], "entities": {"user": ["u1"]}}', 400, ["features", "empty"]),
    (b'{"features": ["n", "n"], "entities": {"user": ["u1"]}}', 400, ["features[1]", "twice"]),
    (b'{"features": ["n"], "entities": {"user": ["u1"]}, "extra": 1}', 400, ["extra"]),
    (json.dumps({"features": ["n"], "entities": {"user": [f"u{i}" for i in range(MAX_KEYS + 1)]}}).encode(), 413,
     [f"{MAX_KEYS + 1}", f"at most {MAX_KEYS}"]),
]


@pytest.mark.parametrize("body,status,words", BAD, ids=[f"{i}-{s}" for i, (_, s, _w) in enumerate(BAD)])
def test_bad_requests_get_4xx_naming_the_problem(served, body, status, words):
    _, url = served
    got, doc = request(url + "/get-online-features", body)
    assert got == status, doc
    assert doc["error"]["status"] == status
    for w in words:
        assert w in doc["error"]["message"], doc


def test_routes_methods_tokens_and_the_server_keeps_answering(served):
    store, url = served
    good = b'{"features": ["n"], "entities": {"user": ["u1"]}}'
    want = int(store.get_features("user", ["u1"], "n")["n"].iloc[0])
    status, doc = request(url + "/nope", good)
    assert status == 404 and "/get-online-features" in doc["error"]["message"]
    status, doc = request(url + "/get-online-features", method="GET")
    assert status == 405 and "POST" in doc["error"]["message"]
    # Token: missing, wrong, wrong scheme -> 401 (before the body is even read); right -> 200.
    for token, words in ((None, "missing bearer token"), ("wrong", "wrong bearer token"),
                         (TOKEN + "x", "wrong bearer token"), ("", "Bearer <token>")):
        status, doc = request(url + "/get-online-features", good, token=token)
        assert status == 401 and words in doc["error"]["message"], (token, doc)
    status, doc = request(url + "/get-online-features", b"not json", token=None)
    assert status == 401
    # /health is open and tells only whether the store is up.
    status, doc = request(url + "/health", token=None)
    assert status == 200 and doc == {"status": "ok", "store": store.name, "features": len(FEATURES)}
    # After all the bad requests of this module the server answers as before.
    status, doc = request(url + "/get-online-features", good)
    assert status == 200 and doc["results"][1]["values"] == [want]


def test_on_demand_features_take_request_context(served):
    store, url = served
    store.register_on_demand("x_scaled", lambda df: df.mean_x.fillna(0.0) * df.factor + df.bonus,
                             inputs=["mean_x"], request=["factor", "bonus"])
    try:
        keys = ["u3", "unseen", "u5"]
        body = {"features": ["n", "x_scaled"], "entities": {"user": keys},
                "request_context": {"factor": [1.5, 2.0, -1.0], "bonus": 10}}
        status, doc = request(url + "/get-online-features", json.dumps(body).encode())
        assert status == 200, doc
        want = store.get_features("user", keys, ["n", "x_scaled"], request={"factor": [1.5, 2.0, -1.0], "bonus": 10})
        assert doc["metadata"]["feature_names"] == ["user", "n", "x_scaled"]
        _same(doc["results"][2]["values"], want["x_scaled"])
        assert doc["results"][2]["values"][1] == 10.0  # an unseen key: mean null, filled by the function
        for context, words in (({"factor": [1.0, 1.0, 1.0]}, ["x_scaled", "bonus"]),
                               ({"factor": [1.0, 2.0], "bonus": 1}, ["request_context.factor", "2 values for 3"]),
                               ([1, 2], ["request_context", "object"])):
            status, doc = request(url + "/get-online-features",
                                  json.dumps({**body, "request_context": context}).encode())
            assert status == 400 and all(w in doc["error"]["message"] for w in words), doc
    finally:
        store.drop_feature("x_scaled")


def test_on_demand_outputs_json_has_no_type_for(served):
    """Datetimes (naive, tz-aware, dates) are ISO-8601 strings, durations seconds, decimals numbers, sets sorted
    arrays; a value with no JSON form is a 500 naming the feature, the key and the type, and the server keeps
    answering."""
    store, url = served
    base = pd.Timestamp("2024-01-02 03:04:05")
    outputs = {
        "od_when": lambda df: base + pd.to_timedelta(df.n, unit="s"),
        "od_when_tz": lambda df: (base + pd.to_timedelta(df.n, unit="s")).dt.tz_localize("Europe/Oslo"),
        "od_day": lambda df: [datetime.date(2024, 1, 1 + int(k) % 28) for k in df.n],
        "od_age": lambda df: pd.to_timedelta(df.n * 1.5, unit="s"),
        "od_dec": lambda df: [decimal.Decimal(int(k)) / 4 for k in df.n],
        "od_tags": lambda df: [{"b", "a", int(k)} if k else set() for k in df.n],
        "od_raw": lambda df: [b"\x00" for _ in df.n],
        "od_cplx": lambda df: df.n * 1j,
    }
    for name, fn in outputs.items():
        store.register_on_demand(name, fn, inputs=["n"])
    try:
        keys = ["u3", "unseen"]
        n = store.get_features("user", keys, ["n"])["n"].tolist()
        body = {"features": [n for n in outputs if n not in ("od_raw", "od_cplx")], "entities": {"user": keys}}
        status, doc = request(url + "/get-online-features", json.dumps(body).encode())
        assert status == 200, doc
        got = dict(zip(doc["metadata"]["feature_names"], (r["values"] for r in doc["results"]), strict=True))
        when = [base + pd.Timedelta(seconds=k) for k in n]
        assert got["od_when"] == [w.isoformat() for w in when]
        assert got["od_when_tz"] == [w.tz_localize("Europe/Oslo").isoformat() for w in when]
        assert got["od_when_tz"][1] == "2024-01-02T03:04:05+01:00"
        assert got["od_day"] == [f"2024-01-{1 + k % 28:02d}" for k in n]
        assert got["od_age"] == [1.5 * k for k in n] and got["od_dec"] == [k / 4 for k in n]
        assert n[0] > 0 and got["od_tags"] == [["a", "b", n[0]], []]  # mixed kinds: by their JSON text
        for name, kind in (("od_raw", "bytes"), ("od_cplx", "complex")):
            status, doc = request(url + "/get-online-features",
                                  json.dumps({"features": ["n", name], "entities": {"user": keys}}).encode())
            assert status == 500 and all(w in doc["error"]["message"] for w in (repr(name), "'u3'", kind)), doc
            assert "internal error" not in doc["error"]["message"]
        status, doc = request(url + "/get-online-features", json.dumps(body).encode())
        assert status == 200, doc
    finally:
        for name in outputs:
            store.drop_feature(name)


CONFIG = """
[store]
name = "{name}"
path = "store"
shards = 1

[serve]
token_env = "MY_TOKEN"
max_keys = 10

[[streams]]
name = "ev"
entities = ["user"]
timestamp = "ts"

[[features]]
name = "n"
stream = "ev"
entity = "user"
agg = "count"
"""


def test_cli_serve_http_with_a_token_from_the_environment(tmp_path):
    """``rayfs serve --config FILE --http PORT`` in its own process (its own local Ray): the HTTP server
    answers with the token of ``[serve] token_env``, refuses without it, and stops with the store."""
    name = "cli" + uuid.uuid4().hex[:8]
    (tmp_path / "s.toml").write_text(CONFIG.format(name=name))
    port = free_port()
    cmd = [sys.executable, "-m", "rayfs.cli", "serve", "--config", "s.toml", "--http", str(port)]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "MY_TOKEN"})
    assert r.returncode == 2 and "MY_TOKEN" in r.stderr, r.stdout + r.stderr  # refused before starting anything
    assert not (tmp_path / "store").exists()

    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MY_TOKEN": "from-env"})
    try:
        lines = []
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("serving until"):
                break
        text = "".join(lines)
        m = re.search(r"HTTP: POST (\S+)/get-online-features", text)
        assert m and "bearer token required" in text, text + (proc.stderr.read() if proc.poll() is not None else "")
        url = m.group(1)
        body = b'{"features": ["n"], "entities": {"user": ["u1", "u2"]}}'
        assert request(url + "/get-online-features", body, token=None)[0] == 401
        assert request(url + "/get-online-features", body, token=TOKEN)[0] == 401
        status, doc = request(url + "/get-online-features", body, token="from-env")
        assert status == 200 and doc["results"][1]["values"] == [0, 0], doc
        keys = json.dumps({"features": ["n"], "entities": {"user": [f"u{i}" for i in range(11)]}}).encode()
        status, doc = request(url + "/get-online-features", keys, token="from-env")
        assert status == 413 and "at most 10" in doc["error"]["message"]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, proc.stderr.read()
    with pytest.raises(OSError):  # the HTTP server went with the store
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
