"""The HTTP feature protocol without the server: request parsing, bearer tokens, response encoding.

Everything here is plain Python (no Ray, no web framework) so the rules of :mod:`rayfs.serve.http` are
checked by unit tests; the Ray Serve deployment only moves bytes between these functions and the store.

Request (``POST /get-online-features``), shaped like Feast's feature server::

    {"features": ["user_upvotes_7d", "user_karma@2"], "entities": {"user": ["u1", "u2"]}}

* ``features``: a non-empty array of distinct feature names (``name`` for the latest version,
  ``name@version`` for an older one), all grouped by the one entity of ``entities``.
* ``entities``: an object with exactly one entity name mapping to an array of keys (strings or
  integers; at most ``max_keys`` of them).
* ``request_context`` (optional): the request fields of on-demand features, Feast's name for request data:
  an object mapping each field to an array of one value per key, or to one value for every key.
* ``full_feature_names``: accepted (a boolean) for Feast clients and ignored: rayfs feature names are
  unique in a store, so a column is always named as requested.

Response (``200``), shaped like Feast's ``get-online-features`` answer::

    {"metadata": {"feature_names": ["user", "user_upvotes_7d", "user_karma@2"]},
     "results": [{"values": ["u1", "u2"], "statuses": ["PRESENT", "PRESENT"]},
                 {"values": [3, 0], "statuses": ["PRESENT", "PRESENT"]},
                 {"values": [12.5, null], "statuses": ["PRESENT", "NULL_VALUE"]}]}

``results[i]`` holds the column ``metadata.feature_names[i]``: first the entity keys as sent, then one
entry per requested feature in request order, one value per key in key order. Values are those of
:meth:`FeatureStore.get_features <rayfs.store.FeatureStore.get_features>`: a key never seen gets the
feature's empty value (0 for counts, null otherwise); a null, NaN, NaT, pandas NA or infinite value is sent as
``null`` with status ``"NULL_VALUE"`` (JSON has no NaN), every other value with ``"PRESENT"``. Values JSON
has no type for (an on-demand feature's outputs) are sent as: datetimes and dates as ISO-8601 strings
(with their UTC offset if they have one), durations as seconds, decimals as numbers, sets as sorted
arrays. Any other value (bytes, a complex number, an object) is the feature's fault: a 500 whose message
names the feature, the key and the type. Feast's ``event_timestamps`` are not sent.

Errors: every refused request gets a JSON body ``{"error": {"status": <code>, "message": "..."}}`` whose
message names the field, feature or entity at fault.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import hmac
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rayfs.errors import HttpRequestError, TokenError

__all__ = ["DEFAULT_MAX_KEYS", "TOKEN_ENV", "OnlineRequest", "check_token", "column_json", "encode_response",
           "error_body", "parse_request", "resolve_token"]

DEFAULT_MAX_KEYS = 1000
"""Keys one request may ask for unless the server is configured otherwise."""
TOKEN_ENV = "RAYFS_HTTP_TOKEN"
"""The environment variable a bearer token is read from when the config names none."""
_TOP_KEYS = ("features", "entities", "request_context", "full_feature_names")


@dataclass(frozen=True)
class OnlineRequest:
    """A parsed ``get-online-features`` request: ``store.get_features(entity, keys, features, request=request)``."""

    entity: str
    keys: list
    features: list[str]
    request: dict[str, Any] = field(default_factory=dict)


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    return {str: "a string", int: "an integer", float: "a number", list: "an array", dict: "an object"}.get(
        type(v), type(v).__name__)


def parse_request(body: bytes, *, max_keys: int = DEFAULT_MAX_KEYS) -> OnlineRequest:
    """Parse and check a ``get-online-features`` body (see the module docstring).

    Only the shape is checked here; whether the features exist and group by the entity is for the store
    to say.

    Raises:
        HttpRequestError: 400 for malformed JSON or a wrong shape or type, 413 for more than ``max_keys``
            keys.

    >>> parse_request(b'{"features": ["n"], "entities": {"user": ["u1", 7]}}')
    OnlineRequest(entity='user', keys=['u1', 7], features=['n'], request={})
    >>> parse_request(b'{"features": ["d"], "entities": {"user": ["u1"]}, "request_context": {"lat": [48.8]}}').request
    {'lat': [48.8]}
    >>> parse_request(b'{"features": ["n"], "entities": {"user": ["u1", 2.5]}}')
    Traceback (most recent call last):
    ...
    rayfs.errors.HttpRequestError: entities.user[1]: expected a string or an integer key, got a number (2.5)
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HttpRequestError(400, f"malformed JSON body: {exc}") from None
    except RecursionError:  # arrays or objects nested deeper than the parser's stack
        raise HttpRequestError(400, "malformed JSON body: arrays or objects nested too deeply") from None
    if not isinstance(doc, dict):
        raise HttpRequestError(400, f"the body must be a JSON object with 'features' and 'entities', got "
                                    f"{_type_name(doc)}")
    unknown = [k for k in doc if k not in _TOP_KEYS]
    if unknown:
        raise HttpRequestError(400, f"unknown field {unknown[0]!r}; allowed fields: {', '.join(_TOP_KEYS)}")
    for key in ("features", "entities"):
        if key not in doc:
            raise HttpRequestError(400, f"missing field {key!r}")
    if "full_feature_names" in doc and not isinstance(doc["full_feature_names"], bool):
        raise HttpRequestError(400, f"full_feature_names: expected a boolean, got "
                                    f"{_type_name(doc['full_feature_names'])}")
    features = doc["features"]
    if not isinstance(features, list) or not features:
        got = "an empty array" if features == [] else _type_name(features)
        raise HttpRequestError(400, f"features: expected a non-empty array of feature names, got {got}")
    seen: set[str] = set()
    for i, f in enumerate(features):
        if not isinstance(f, str) or not f.strip():
            raise HttpRequestError(400, f"features[{i}]: expected a feature name, got {_type_name(f)} ({f!r})")
        if f in seen:
            raise HttpRequestError(400, f"features[{i}]: feature {f!r} is requested twice")
        seen.add(f)
    entities = doc["entities"]
    if not isinstance(entities, dict) or len(entities) != 1:
        got = _type_name(entities) if not isinstance(entities, dict) else f"{len(entities)} entities " \
              f"({', '.join(map(repr, entities)) or 'none'})"
        raise HttpRequestError(400, "entities: expected an object with exactly one entity name mapping to an array "
                                    f"of keys, e.g. {{\"user\": [\"u1\", \"u2\"]}}; got {got}")
    (entity, keys), = entities.items()
    if not isinstance(keys, list):
        raise HttpRequestError(400, f"entities.{entity}: expected an array of keys, got {_type_name(keys)}")
    if len(keys) > max_keys:
        raise HttpRequestError(413, f"entities.{entity}: {len(keys):,} keys in one request; this server answers at "
                                    f"most {max_keys:,} (split the request)")
    for i, k in enumerate(keys):
        if isinstance(k, bool) or not isinstance(k, str | int):
            raise HttpRequestError(400, f"entities.{entity}[{i}]: expected a string or an integer key, got "
                                        f"{_type_name(k)} ({k!r})")
    context = doc.get("request_context", {})
    if not isinstance(context, dict):
        raise HttpRequestError(400, f"request_context: expected an object mapping request fields to values, got "
                                    f"{_type_name(context)}")
    for name, values in context.items():
        if isinstance(values, dict):
            raise HttpRequestError(400, f"request_context.{name}: expected an array of one value per key or one "
                                        "value, got an object")
        if isinstance(values, list) and len(values) != len(keys):
            raise HttpRequestError(400, f"request_context.{name}: {len(values)} values for {len(keys)} keys (give "
                                        "one value per key, or one value)")
    return OnlineRequest(entity=entity, keys=keys, features=list(features), request=context)


# ------------------------------------------------------------------------------------------ tokens
def resolve_token(token: str | None = None, token_env: str | None = None) -> str | None:
    """The bearer token a server requires, ``None`` for an open server.

    ``token`` (from the config) wins; else the environment variable ``token_env`` (which must then be set:
    a config that names a variable means to protect the server); else :data:`TOKEN_ENV` if set.

    Raises:
        TokenError: ``token`` is empty, or ``token_env`` names an unset or empty variable.

    >>> resolve_token("s3cret")
    's3cret'
    >>> resolve_token(token_env="RAYFS_TEST_SURELY_UNSET")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rayfs.errors.TokenError: serve.token_env: environment variable 'RAYFS_TEST_SURELY_UNSET' is not set...
    """
    if token is not None:
        if not token.strip():
            raise TokenError("serve.token: the bearer token must not be empty")
        return token
    if token_env is not None:
        value = os.environ.get(token_env, "")
        if not value.strip():
            raise TokenError(f"serve.token_env: environment variable {token_env!r} is not set (or empty); set it "
                             "to the bearer token the HTTP server requires")
        return value
    value = os.environ.get(TOKEN_ENV, "")
    return value if value.strip() else None


def check_token(authorization: str | None, token: str | None) -> None:
    """Accept a request's ``Authorization`` header for a server whose token is ``token``.

    The comparison takes the same time wherever the given token first differs (:func:`hmac.compare_digest`).

    Raises:
        HttpRequestError: 401 if ``token`` is set and the header is missing, not ``Bearer <token>``, or
            carries another token.

    >>> check_token(None, None), check_token("Bearer abc", "abc")
    (None, None)
    >>> check_token("Bearer abd", "abc")
    Traceback (most recent call last):
    ...
    rayfs.errors.HttpRequestError: wrong bearer token
    """
    if token is None:
        return
    if not authorization:
        raise HttpRequestError(401, "missing bearer token: send the header 'Authorization: Bearer <token>'")
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise HttpRequestError(401, "the Authorization header must be 'Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HttpRequestError(401, "wrong bearer token")


# ------------------------------------------------------------------------------------------ responses
def _plain(v: Any) -> tuple[Any, bool]:
    """``v`` as a JSON-ready value, and whether it is null (None, NaN, infinite, NaT).

    Datetimes and dates become ISO-8601 strings (with their UTC offset when they have one), durations
    seconds, decimals numbers, sets sorted arrays. Raises :class:`_Unencodable` for a value JSON has no form
    for (bytes, complex numbers, other objects).
    """
    if v is None or v is pd.NaT or v is pd.NA:  # pd.NA: the missing value of pandas' nullable dtypes
        return None, True
    if isinstance(v, np.datetime64 | np.timedelta64):
        if np.isnat(v):
            return None, True
        if isinstance(v, np.timedelta64):
            return float(v / np.timedelta64(1, "us")) / 1e6, False
        return pd.Timestamp(v).isoformat(), False  # (.item() of nanoseconds is an int)
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool | int | str):
        return v, False
    if isinstance(v, float | decimal.Decimal):
        f = float("nan") if isinstance(v, decimal.Decimal) and v.is_nan() else float(v)  # (a signaling NaN raises)
        return (None, True) if not math.isfinite(f) else (f, False)
    if isinstance(v, _dt.datetime | _dt.date | _dt.time):  # pd.Timestamp is a datetime
        return v.isoformat(), False
    if isinstance(v, _dt.timedelta):  # pd.Timedelta too
        return v.total_seconds(), False
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, list | tuple):
        return [_plain(x)[0] for x in v], False
    if isinstance(v, dict):
        return {str(_plain(k)[0]): _plain(x)[0] for k, x in v.items()}, False
    if isinstance(v, set | frozenset):
        items = [_plain(x)[0] for x in v]
        try:
            return sorted(items), False
        except TypeError:  # mixed kinds: ordered by their JSON text, the same order on every call
            return sorted(items, key=lambda x: json.dumps(x, sort_keys=True)), False
    raise HttpRequestError(500, type(v).__name__)


def column_json(values: np.ndarray | Sequence, feature: str = "a feature", keys: Sequence | None = None
                ) -> dict[str, list]:
    """One ``results`` entry: ``{"values": [...], "statuses": [...]}`` for a column of values.

    >>> column_json(np.array([1.5, np.nan]))
    {'values': [1.5, None], 'statuses': ['PRESENT', 'NULL_VALUE']}
    >>> column_json(np.array(["2024-01-02T03:04:05", "NaT"], dtype="datetime64[ns]"))["values"]
    ['2024-01-02T03:04:05', None]

    Raises:
        HttpRequestError: 500, for a value with no JSON form, naming ``feature``, the value's key (from
            ``keys``, one per value) and its type: the feature's fault, not the request's.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind in "iub":
        out = values.tolist()  # the common case (counts) without a Python call per value
        return {"values": out, "statuses": ["PRESENT"] * len(out)}
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        finite = np.isfinite(values)
        if finite.all():
            out = values.tolist()
            return {"values": out, "statuses": ["PRESENT"] * len(out)}
    vals, statuses = [], []
    for i, v in enumerate(values):
        try:
            p, null = _plain(v)
        except HttpRequestError as exc:
            where = f"key {keys[i]!r}" if keys is not None else f"row {i}"
            raise HttpRequestError(500, f"{feature}: the value for {where} is of type {exc.message}, which has no JSON "
                                        "form (numbers, strings, booleans, datetimes, durations, decimals, and "
                                        "lists, sets or dicts of them have one)") from None
        vals.append(p)
        statuses.append("NULL_VALUE" if null else "PRESENT")
    return {"values": vals, "statuses": statuses}


def encode_response(request: OnlineRequest, frame) -> bytes:
    """The JSON answer to ``request`` from ``frame = store.get_features(entity, keys, features)``.

    >>> import pandas as pd
    >>> req = OnlineRequest("user", ["u1", "u2"], ["n"])
    >>> encode_response(req, pd.DataFrame({"user": ["u1", "u2"], "n": [3, 0]})).decode()[:58]
    '{"metadata": {"feature_names": ["user", "n"]}, "results": '

    Raises:
        HttpRequestError: 500, for a feature value with no JSON form (see :func:`column_json`).
    """
    names = [request.entity, *request.features]
    results = [{"values": list(request.keys), "statuses": ["PRESENT"] * len(request.keys)}]
    results += [column_json(frame[f].to_numpy(), f"feature {f!r}", request.keys) for f in request.features]
    return json.dumps({"metadata": {"feature_names": names}, "results": results}, allow_nan=False).encode()


def error_body(status: int, message: str) -> bytes:
    """The JSON body of a refused request.

    >>> error_body(404, "no route GET /x")
    b'{"error": {"status": 404, "message": "no route GET /x"}}'
    """
    return json.dumps({"error": {"status": status, "message": message}}).encode()
