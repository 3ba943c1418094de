"""The HTTP feature server: a Ray Serve application that answers feature reads from a named store.

Routes (request and response bodies: :mod:`rayfs.serve.protocol`):

* ``POST /get-online-features``: ``{"features": [...], "entities": {"user": ["u1", "u2"]}}`` answers
  Feast-shaped JSON with the values of ``store.get_features(entity, keys, features)``; on-demand features
  take their request fields from ``"request_context": {"field": [one value per key]}``.
* ``GET /health``: ``200 {"status": "ok", "store": ..., "features": <count>}`` while the store runs, ``503``
  with ``"status": "unavailable"`` and the reason otherwise. It never asks for a token, so load balancers
  and orchestrators can probe it; it tells nothing beyond whether the store is up and how many features
  it has.

Status codes: 400 for a malformed or ill-typed body and for anything the store refuses as bad input
(unknown feature, a feature of another entity, bad keys: every :class:`~rayfs.errors.RayfsError` the read
raises); 401 without the right bearer token; 404 for another path; 405 for another method; 413 for more
keys than ``max_keys`` or a body larger than ``max_keys`` KiB (at least 1 MiB); 503 while the store cannot
be reached (not started, stopped); 500 for anything else, with the exception's type and message. Every
error body is ``{"error": {"status": ..., "message": ...}}`` and no request takes the server down.

Replicas find the store by name (:func:`rayfs.connect`), so it must be a named store
(``FeatureStore.open(path, name=...)`` or ``rayfs serve``) in the same Ray cluster; each replica connects on
its first request and again after the store was restarted. Serve starts an HTTP proxy on the nodes of the
cluster and replicas wherever Ray places them; ``num_replicas="auto"`` lets Serve add replicas with load.
Replicas ask for no CPU (like the shards), so they fit next to a store on a small machine.

Bearer token: a server started with ``token`` answers ``POST`` requests only with the header
``Authorization: Bearer <token>`` (compared in constant time); without ``token`` it is open.
:func:`rayfs.serve.protocol.resolve_token` finds the token of a config (``[serve] token`` or
``token_env``) or of the ``RAYFS_HTTP_TOKEN`` environment variable. The token travels to the replicas as a
deployment argument, which anyone who can reach the Ray cluster can read: protect the cluster itself with
Ray's token authentication (``RAY_AUTH_MODE=token``).

Example::

    from rayfs.serve.http import serve_http, stop_http
    url = serve_http("reddit", port=8000, token="s3cret")     # returns once the replicas answer
    # curl -H 'Authorization: Bearer s3cret' -d '{"features": ["user_upvotes_7d"],
    #       "entities": {"user": ["u1"]}}' http://127.0.0.1:8000/get-online-features
    stop_http("reddit")
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from rayfs.errors import DefinitionError, HttpRequestError, RayfsError, StoreClosedError, StoreOpenError
from rayfs.serve.protocol import (
    DEFAULT_MAX_KEYS,
    OnlineRequest,
    check_token,
    encode_response,
    error_body,
    parse_request,
)

__all__ = ["FeatureServer", "app_name", "build_app", "serve_http", "stop_http"]

_UNAVAILABLE = (StoreOpenError, StoreClosedError)
"""Store errors that mean "not running" (answered 503), not "bad request"."""


def app_name(store: str) -> str:
    """The Serve application name of the HTTP server for store ``store``.

    >>> app_name("reddit")
    'rayfs-reddit'
    """
    return f"rayfs-{store}"


class FeatureServer:
    """One Serve replica: parses requests, reads features from the named store, answers JSON.

    Args:
        store: the store's name.
        namespace: the Ray namespace of the store's actors.
        token: the bearer token ``POST`` requests must carry; ``None`` for an open server.
        max_keys: the most keys one request may ask for.
    """

    def __init__(self, store: str, namespace: str = "rayfs", token: str | None = None,
                 max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.store_name = store
        self.namespace = namespace
        self.token = token
        self.max_keys = max_keys
        self.max_body = max(1 << 20, max_keys << 10)
        self._store = None
        self._lock = threading.Lock()  # one connect at a time; reads share the handle

    # ------------------------------------------------------------------------------------- the store
    def _connect(self):
        with self._lock:
            if self._store is None:
                import rayfs

                self._store = rayfs.connect(self.store_name, namespace=self.namespace)
            return self._store

    def _forget(self, store) -> None:
        """Drop a handle that failed so the next request connects again (the store may have restarted)."""
        with self._lock:
            if self._store is store:
                self._store = None

    def read(self, req: OnlineRequest) -> bytes:
        """The JSON answer to ``req`` (blocking: runs in a worker thread of the replica)."""
        store = self._connect()
        try:
            frame = store.get_features(req.entity, req.keys, req.features, request=req.request or None)
        except _UNAVAILABLE:
            self._forget(store)
            raise
        except RayfsError:
            raise
        except Exception:
            self._forget(store)  # a dead actor or a lost node: reconnect on the next request
            raise
        return encode_response(req, frame)

    def health(self) -> tuple[int, dict[str, Any]]:
        """``(status, body)`` of ``GET /health``."""
        try:
            store = self._connect()
            if not store.alive():
                self._forget(store)
                raise StoreClosedError(f"store {self.store_name!r} was stopped")
            return 200, {"status": "ok", "store": self.store_name, "features": len(store.features)}
        except Exception as exc:  # health answers, whatever went wrong
            return 503, {"status": "unavailable", "store": self.store_name,
                         "error": f"{type(exc).__name__}: {exc}"}

    # ------------------------------------------------------------------------------------- HTTP
    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """``(status, JSON body)`` for one request; never raises."""
        path = path.rstrip("/") or "/"
        try:
            if path == "/health":
                if method not in ("GET", "HEAD"):
                    raise HttpRequestError(405, f"{method} {path}: use GET")
                status, doc = await asyncio.to_thread(self.health)
                return status, json.dumps(doc).encode()
            if path != "/get-online-features":
                raise HttpRequestError(404, f"no route {method} {path}; routes: POST /get-online-features, "
                                            "GET /health")
            if method != "POST":
                raise HttpRequestError(405, f"{method} {path}: use POST with a JSON body")
            check_token(headers.get("authorization"), self.token)
            if len(body) > self.max_body:
                raise HttpRequestError(413, f"request body of {len(body):,} bytes; this server takes at most "
                                            f"{self.max_body:,}")
            req = parse_request(body, max_keys=self.max_keys)
            return 200, await asyncio.to_thread(self.read, req)
        except HttpRequestError as exc:
            return exc.status, error_body(exc.status, exc.message)
        except _UNAVAILABLE as exc:
            return 503, error_body(503, f"store {self.store_name!r} is not available: {exc}")
        except RayfsError as exc:
            return 400, error_body(400, str(exc))
        except Exception as exc:  # a bug or a cluster failure: answer, log, keep serving
            return 500, error_body(500, f"internal error: {type(exc).__name__}: {exc}")

    async def __call__(self, request):
        """The Serve entry point: a Starlette request in, a Starlette response out."""
        from starlette.responses import Response

        body = await request.body() if request.method == "POST" else b""
        headers = {"authorization": request.headers.get("authorization", "")}
        status, payload = await self.handle(request.method, request.url.path, headers, body)
        extra = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return Response(payload, status_code=status, media_type="application/json", headers=extra)


def build_app(store: str, *, namespace: str = "rayfs", token: str | None = None, max_keys: int = DEFAULT_MAX_KEYS,
              num_replicas: int | str = 1, max_ongoing_requests: int = 64):
    """The Serve application (``Deployment.bind(...)``) of the HTTP server for ``store``.

    Args:
        store: the named store to read from.
        namespace: the Ray namespace of its actors.
        token: the bearer token requests must carry (``None``: open).
        max_keys: the most keys one request may ask for.
        num_replicas: a number of replicas, or ``"auto"`` for Serve's autoscaling.
        max_ongoing_requests: requests one replica works on at once.
    """
    from ray import serve

    if not isinstance(max_keys, int) or isinstance(max_keys, bool) or max_keys < 1:
        raise DefinitionError(f"serve.max_keys must be a positive integer, not {max_keys!r}")
    deployment = serve.deployment(
        FeatureServer, name="FeatureServer", num_replicas=num_replicas, max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
        # One log line per request would cost more than the read itself.
        logging_config={"enable_access_log": False, "log_level": "WARNING"})
    return deployment.bind(store, namespace, token, max_keys)


def serve_http(store: str, *, namespace: str = "rayfs", host: str = "127.0.0.1", port: int = 8000,
               token: str | None = None, max_keys: int = DEFAULT_MAX_KEYS, num_replicas: int | str = 1,
               route_prefix: str = "/") -> str:
    """Start (or update) the HTTP server of the named store ``store``; returns its base URL.

    Ray must be initialised (the store's cluster). Serve keeps one HTTP host and port per Ray cluster: the
    first call sets them, and a cluster whose Serve already listens elsewhere is refused.

    Args:
        store: the named store to read from.
        namespace: the Ray namespace of its actors.
        host: the address to listen on (``"0.0.0.0"`` for every interface).
        port: the TCP port.
        token: the bearer token requests must carry (``None``: open; see :func:`~rayfs.serve.protocol.resolve_token`).
        max_keys: the most keys one request may ask for.
        num_replicas: replicas, or ``"auto"`` to let Serve scale them with load.
        route_prefix: the path the routes hang under.

    Raises:
        StoreOpenError: no store of that name runs, or Serve already listens on another host or port.
    """
    from ray import serve

    import rayfs

    rayfs.connect(store, namespace=namespace).close()  # refuse at once a name with no store behind it
    serve.start(http_options={"host": host, "port": port})
    actual = _http_address()
    if actual is not None and actual != (host, port):
        raise StoreOpenError(f"Ray Serve in this cluster already listens on {actual[0]}:{actual[1]}, not "
                             f"{host}:{port}; use that port or shut Serve down first (serve.shutdown())")
    serve.run(build_app(store, namespace=namespace, token=token, max_keys=max_keys, num_replicas=num_replicas),
              name=app_name(store), route_prefix=route_prefix, blocking=False)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}{route_prefix.rstrip('/')}"


def _http_address() -> tuple[str, int] | None:
    """The (host, port) Serve's HTTP proxies listen on, if Serve runs and says."""
    try:
        from ray.serve.context import _get_global_client

        cfg = _get_global_client().http_config
        return cfg.host, int(cfg.port)
    except Exception:  # an older Serve without this attribute: trust serve.start
        return None


def stop_http(store: str, *, shutdown: bool = True) -> None:
    """Delete the HTTP application of ``store``; with ``shutdown``, also stop Serve if no other app remains."""
    from ray import serve

    try:
        serve.delete(app_name(store))
    finally:
        if shutdown and not serve.status().applications:
            serve.shutdown()
