"""The HTTP feature server's rules without Ray: request parsing, tokens, JSON encoding, the routes that
answer before the store is asked, the ``[serve]`` config table and the CLI's reading of it."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from rayfs.cli import _http_settings, _parser
from rayfs.model.config import ConfigError, ServeSettings, dump_config, parse_config
from rayfs.serve.http import FeatureServer
from rayfs.serve.protocol import (
    TOKEN_ENV,
    HttpRequestError,
    OnlineRequest,
    TokenError,
    check_token,
    column_json,
    encode_response,
    parse_request,
    resolve_token,
)


def body(**doc) -> bytes:
    return json.dumps(doc).encode()


def test_parse_a_good_request() -> None:
    req = parse_request(body(features=["a", "b@2"], entities={"user": ["u1", 7, "u1"]}, full_feature_names=True))
    assert req == OnlineRequest(entity="user", keys=["u1", 7, "u1"], features=["a", "b@2"])
    assert parse_request(body(features=["a"], entities={"user": []})).keys == []


@pytest.mark.parametrize("raw,status,words", [
    (b"", 400, ["malformed JSON"]),
    (b"\xff\xfe", 400, ["malformed JSON"]),
    (b'"text"', 400, ["JSON object", "a string"]),
    (body(features=["a"]), 400, ["missing field 'entities'"]),
    (body(entities={"user": ["u"]}), 400, ["missing field 'features'"]),
    (body(features=["a"], entities={"user": ["u"]}, full_feature_names="yes"), 400, ["full_feature_names"]),
    (body(features=["a"], entities={"user": ["u"]}, feature_service="x"), 400, ["unknown field 'feature_service'"]),
    (body(features=[], entities={"user": ["u"]}), 400, ["features", "an empty array"]),
    (body(features={"a": 1}, entities={"user": ["u"]}), 400, ["features", "an object"]),
    (body(features=["a", 3], entities={"user": ["u"]}), 400, ["features[1]", "an integer"]),
    (body(features=["a", " "], entities={"user": ["u"]}), 400, ["features[1]"]),
    (body(features=["a", "a"], entities={"user": ["u"]}), 400, ["features[1]", "'a'", "twice"]),
    (body(features=["a"], entities=["u"]), 400, ["entities", "an array"]),
    (body(features=["a"], entities={}), 400, ["entities", "0 entities", "none"]),
    (body(features=["a"], entities={"user": ["u"], "post": ["p"]}), 400, ["2 entities", "'user', 'post'"]),
    (body(features=["a"], entities={"user": {"u": 1}}), 400, ["entities.user", "an object"]),
    (body(features=["a"], entities={"user": ["u", 1.5]}), 400, ["entities.user[1]", "a number (1.5)"]),
    (body(features=["a"], entities={"user": ["u", ["v"]]}), 400, ["entities.user[1]", "an array"]),
    (body(features=["a"], entities={"user": [False]}), 400, ["entities.user[0]", "a boolean"]),
    (body(features=["a"], entities={"user": ["u"] * 11}), 413, ["11 keys", "at most 10"]),
])
def test_bad_requests_are_refused_with_a_message(raw: bytes, status: int, words: list[str]) -> None:
    with pytest.raises(HttpRequestError) as info:
        parse_request(raw, max_keys=10)
    assert info.value.status == status
    for w in words:
        assert w in info.value.message


def test_tokens() -> None:
    check_token(None, None)
    check_token("anything", None)  # an open server ignores the header
    check_token("Bearer s3cret", "s3cret")
    check_token("bearer  s3cret ", "s3cret")
    for header, words in ((None, "missing"), ("", "missing"), ("s3cret", "Bearer <token>"),
                          ("Basic s3cret", "Bearer <token>"), ("Bearer", "Bearer <token>"),
                          ("Bearer s3cre", "wrong"), ("Bearer s3cret2", "wrong"), ("Bearer S3CRET", "wrong")):
        with pytest.raises(HttpRequestError) as info:
            check_token(header, "s3cret")
        assert info.value.status == 401 and words in info.value.message, header


def test_resolve_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv("MY_TOKEN", raising=False)
    assert resolve_token() is None
    monkeypatch.setenv(TOKEN_ENV, "from-default-env")
    assert resolve_token() == "from-default-env"
    assert resolve_token("from-config") == "from-config"
    with pytest.raises(TokenError, match="'MY_TOKEN' is not set"):
        resolve_token(token_env="MY_TOKEN")  # named but unset: refuse rather than serve open
    monkeypatch.setenv("MY_TOKEN", "from-my-env")
    assert resolve_token(token_env="MY_TOKEN") == "from-my-env"
    with pytest.raises(TokenError, match="serve.token"):
        resolve_token(" ")


def test_column_json_nulls_numpy_scalars_and_lists() -> None:
    assert column_json(np.array([1, 2], dtype=np.int64)) == {"values": [1, 2], "statuses": ["PRESENT"] * 2}
    out = column_json(np.array([0.5, np.nan, np.inf, -np.inf]))
    assert out == {"values": [0.5, None, None, None], "statuses": ["PRESENT"] + ["NULL_VALUE"] * 3}
    obj = np.empty(5, dtype=object)
    obj[:] = [None, "x", [np.int64(1), np.float64(np.nan)], {"k": np.float32(2.0)}, np.str_("y")]
    out = column_json(obj)
    assert out["values"] == [None, "x", [1, None], {"k": 2.0}, "y"]
    assert out["statuses"] == ["NULL_VALUE", "PRESENT", "PRESENT", "PRESENT", "PRESENT"]
    json.dumps(out, allow_nan=False)


def test_column_json_gives_datetimes_durations_decimals_and_sets_a_json_form() -> None:
    t = pd.Timestamp("2024-01-02 03:04:05.25")
    cases = [
        (np.array([t.to_datetime64(), np.datetime64("NaT")]), ["2024-01-02T03:04:05.250000", None]),
        (pd.Series([t, pd.NaT]).dt.tz_localize("UTC").dt.tz_convert("Asia/Kolkata").to_numpy(),
         ["2024-01-02T08:34:05.250000+05:30", None]),
        (np.array([np.timedelta64(1500, "ms"), np.timedelta64("NaT")]), [1.5, None]),
        ([dt.date(2024, 1, 2), dt.datetime(2024, 1, 2, tzinfo=dt.UTC), dt.timedelta(days=1), pd.Timedelta("2s")],
         ["2024-01-02", "2024-01-02T00:00:00+00:00", 86400.0, 2.0]),
        ([decimal.Decimal("2.5"), decimal.Decimal("NaN"), decimal.Decimal("sNaN"), decimal.Decimal("-Infinity")],
         [2.5, None, None, None]),
        ([{3, 1, 2}, frozenset({"b", "a"}), {1, "a"}, [{t}], {"at": t}],
         [[1, 2, 3], ["a", "b"], ["a", 1], [["2024-01-02T03:04:05.250000"]], {"at": "2024-01-02T03:04:05.250000"}]),
    ]
    for values, want in cases:
        obj = np.empty(len(values), dtype=object)
        obj[:] = list(values)
        for col in (values, obj) if isinstance(values, np.ndarray) else (obj,):
            out = column_json(col)
            assert out["values"] == want, (col, out)
            assert out["statuses"] == ["NULL_VALUE" if w is None else "PRESENT" for w in want]
            json.dumps(out, allow_nan=False)


@pytest.mark.parametrize("bad", [b"\x00", 1 + 2j, np.complex64(1j), object(), [b"x"], {"k": {b"x"}}])
def test_a_value_with_no_json_form_is_a_500_naming_the_feature_key_and_type(bad) -> None:
    values = np.empty(2, dtype=object)
    values[:] = [1.0, bad]
    req = OnlineRequest("user", ["u1", "u2"], ["n", "odd"])
    frame = pd.DataFrame({"user": ["u1", "u2"], "n": [1, 2], "odd": values})
    with pytest.raises(HttpRequestError, match=r"feature 'odd': the value for key 'u2' is of type \w+") as info:
        encode_response(req, frame)
    assert info.value.status == 500


def test_encode_response_is_feast_shaped_strict_json() -> None:
    req = OnlineRequest("user", ["u1", 2], ["n", "m", "last"])
    frame = pd.DataFrame({"user": ["u1", 2], "n": np.array([3, 0]), "m": [1.5, math.nan],
                          "last": pd.Series(["p", None], dtype=object)})
    doc = json.loads(encode_response(req, frame))
    assert doc == {"metadata": {"feature_names": ["user", "n", "m", "last"]},
                   "results": [{"values": ["u1", 2], "statuses": ["PRESENT", "PRESENT"]},
                               {"values": [3, 0], "statuses": ["PRESENT", "PRESENT"]},
                               {"values": [1.5, None], "statuses": ["PRESENT", "NULL_VALUE"]},
                               {"values": ["p", None], "statuses": ["PRESENT", "NULL_VALUE"]}]}


def answer(server: FeatureServer, method: str, path: str, raw: bytes = b"", auth: str = "") -> tuple[int, dict]:
    status, payload = asyncio.run(server.handle(method, path, {"authorization": auth}, raw))
    return status, json.loads(payload)


def test_routes_that_answer_before_the_store_is_asked() -> None:
    """Routing, methods, tokens, body size and shape are checked before the replica connects to the store
    (here no store exists: reaching it would need Ray)."""
    server = FeatureServer("nostore", token="tok", max_keys=5)
    good = body(features=["n"], entities={"user": ["u"]})
    assert answer(server, "GET", "/")[0] == 404
    status, doc = answer(server, "POST", "/get-features", good, "Bearer tok")
    assert status == 404 and "POST /get-features" in doc["error"]["message"]
    assert answer(server, "GET", "/get-online-features")[0] == 405
    assert answer(server, "POST", "/health")[0] == 405
    assert answer(server, "POST", "/get-online-features", good)[0] == 401
    assert answer(server, "POST", "/get-online-features", good, "Bearer nope")[0] == 401
    status, doc = answer(server, "POST", "/get-online-features", b"{", "Bearer tok")
    assert status == 400 and doc == {"error": {"status": 400, "message": doc["error"]["message"]}}
    status, doc = answer(server, "POST", "/get-online-features/", b" " * (server.max_body + 1), "Bearer tok")
    assert status == 413 and "bytes" in doc["error"]["message"]
    status, doc = answer(server, "POST", "/get-online-features", body(features=["n"], entities={"user": ["u"] * 6}),
                         "Bearer tok")
    assert status == 413 and "at most 5" in doc["error"]["message"]
    assert server._store is None


SERVE = """
[store]
name = "s"
path = "/tmp/x"
[serve]
{body}
"""


def test_serve_table() -> None:
    cfg = parse_config(SERVE.format(body='port = 8080\nhost = "0.0.0.0"\ntoken_env = "T"\nmax_keys = 50\n'
                                         'num_replicas = "auto"'))
    assert cfg.serve == ServeSettings(port=8080, host="0.0.0.0", token_env="T", max_keys=50, num_replicas="auto")
    assert parse_config(dump_config(cfg)).serve == cfg.serve
    plain = parse_config('[store]\npath = "/tmp/x"\n')
    assert plain.serve == ServeSettings() and "[serve]" not in dump_config(plain)
    assert "s3cret" not in repr(parse_config(SERVE.format(body='token = "s3cret"')).serve)


@pytest.mark.parametrize("text,where", [
    ("port = 0", "serve.port: must be a TCP port"),
    ("port = \"80\"", "serve.port: expected an integer"),
    ("prot = 80", "serve.prot: unknown key 'prot' (did you mean 'port'?)"),
    ('token = "a"\ntoken_env = "B"', "serve.token_env: give token or token_env, not both"),
    ('token = ""', "serve.token: must not be empty"),
    ("max_keys = 0", "serve.max_keys: must be a positive integer"),
    ('num_replicas = "many"', "serve.num_replicas: must be a positive integer or \"auto\""),
    ("num_replicas = 0", "serve.num_replicas"),
])
def test_serve_table_errors_name_file_line_and_key(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(SERVE.format(body=text), source="c.toml")
    assert str(info.value).startswith("c.toml:") and where in str(info.value), str(info.value)


def test_cli_http_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    cfg = parse_config(SERVE.format(body="port = 9000\nmax_keys = 20"))
    args = _parser().parse_args(["serve", "--config", "x.toml"])
    assert _http_settings(args, cfg) == {"host": "127.0.0.1", "port": 9000, "max_keys": 20, "num_replicas": 1,
                                         "token": None}
    args = _parser().parse_args(["serve", "--config", "x.toml", "--http", "8000", "--http-host", "0.0.0.0"])
    monkeypatch.setenv(TOKEN_ENV, "env-token")
    got = _http_settings(args, cfg)
    assert (got["host"], got["port"], got["token"]) == ("0.0.0.0", 8000, "env-token")
    no_http = SimpleNamespace(http=None, http_host=None)
    assert _http_settings(no_http, parse_config('[store]\npath = "/tmp/x"\n')) is None
