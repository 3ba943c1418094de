"""Declarative store configs in TOML: one file names a store, its streams and its features.

A config describes a store (where its data lives, how many shards, how durable) and the definitions to
register on it. :func:`load_config` reads a file and :func:`parse_config` a string; both return a frozen
:class:`StoreConfig` whose streams and features are the ordinary :class:`~rayfs.model.definitions.Stream` and
:class:`~rayfs.model.definitions.Feature` objects (validated exactly as the Python API validates them). Nothing
here starts Ray or touches the store's folder: :meth:`StoreSettings.open_kwargs` and
:meth:`StoreConfig.apply` hand the config to :meth:`FeatureStore.open <rayfs.store.FeatureStore.open>`.

Example (``configs/reddit.toml`` in the repository is a longer one)::

    [store]
    name = "reddit"           # optional: a named store, reachable with rayfs.connect("reddit")
    path = "../data/reddit"   # required: relative paths are relative to this file's directory
    shards = 4                # optional (default: 4 for a new store, the existing count on reopen)
    durability = "sync"       # optional: "sync" (default) | "group" | "none"
    namespace = "rayfs"       # optional: the Ray namespace of the store's actors (default "rayfs")
    online_table = false      # optional: shards keep an online table that reads never wait behind

    [[streams]]
    name = "upvotes"
    entities = ["user", "post"]
    timestamp = "ts"

    [[features]]
    name = "user_upvotes_7d"
    stream = "upvotes"
    entity = "user"
    agg = "count"
    window = "7d"             # optional (default: lifetime)
    where = "score > 0"       # optional SQL predicate over the event's columns
    description = "Upvotes the user gave in the last 7 days"
    owner = "feed-ranking"
    tags = ["engagement"]

    [[sql]]
    query = "SELECT user, COUNT(DISTINCT subreddit) AS user_subreddits_30d FROM upvotes GROUP BY user"
    window = "30d"            # optional, applies to every feature of the statement
    description = "Distinct subreddits the user upvoted in, last 30 days"
    owner = "feed-ranking"    # optional, like description
    tags = ["diversity"]      # optional

Schema (every table rejects keys it does not list; every value's type is checked):

* ``[store]`` (required): ``path`` (string, required); ``name`` (identifier); ``shards`` (integer >= 1);
  ``durability`` (``"sync"``, ``"group"`` or ``"none"``); ``namespace`` (non-empty string).
* ``[[streams]]``: ``name``, ``entities`` (array of strings), ``timestamp`` -- all required.
* ``[streams.kafka]`` (optional, after a ``[[streams]]`` table): subscribes that stream to a Kafka topic;
  ``topic``, ``bootstrap_servers`` (required strings); ``format``, ``start``, ``timestamp``,
  ``on_offset_reset`` (strings); ``consumers``, ``max_batch_rows``, ``catch_up`` (integers); ``max_delay`` (number);
  ``consumer_config`` (a table of librdkafka settings). These are :class:`rayfs.KafkaSource`'s arguments;
  :meth:`FeatureStore.apply <rayfs.store.FeatureStore.apply>` and ``rayfs serve`` subscribe the stream.
* ``[[observations]]`` (optional): an observation stream (labels for ``training_set("name", ...)``) fed by a
  Kafka topic: ``name``, ``keys`` (array of strings: the entity key columns every label carries) required;
  ``timestamp`` (string, default ``"ts"``); and its ``[observations.kafka]`` table (required, the keys of
  ``[streams.kafka]``). Applying the config subscribes it (see
  :meth:`FeatureStore.subscribe <rayfs.store.FeatureStore.subscribe>`'s ``observation_keys``).
* ``[[features]]``: ``name``, ``stream``, ``entity``, ``agg`` (required strings); ``column``, ``window``
  (``"30s"``, ``"15m"``, ``"3h"``, ``"7d"``), ``where``, ``description``, ``owner`` (strings); ``k``
  (integer); ``q`` (number); ``tags`` (array of strings). These are :class:`~rayfs.model.definitions.Feature`'s
  arguments.
* ``[[sql]]``: ``query`` (required: ``SELECT <entity>, <AGG>(...) [AS name], ... FROM <stream> [WHERE ...]
  GROUP BY <entity>``, see :mod:`rayfs.model.sql`); ``window``, ``description``, ``owner``, ``tags`` (given to
  every feature of the statement).
* ``[[on_demand]]``: an on-demand feature (see :class:`rayfs.OnDemandFeature`): ``name``, ``function``
  (required; ``"package.module:attribute"``, a vectorised function importable where the config is applied:
  the store keeps it by value, as :meth:`FeatureStore.register_on_demand
  <rayfs.store.FeatureStore.register_on_demand>` does); ``inputs`` (stored features it reads),
  ``request`` (request fields), ``tags`` (arrays of strings); ``description``, ``owner`` (strings).
* ``[serve]`` (optional; the HTTP feature server of ``rayfs serve --http``, see :class:`ServeSettings`):
  ``port`` (integer 1-65535), ``host`` (string), ``token`` or ``token_env`` (strings, not both),
  ``max_keys`` (integer >= 1), ``num_replicas`` (integer >= 1 or ``"auto"``).

Rules beyond the types: a feature's (or SQL statement's) stream must be a stream of the same config and
its entity one of that stream's entities; stream names are unique, and feature names are unique across
``[[features]]``, the features of every ``[[sql]]`` statement and ``[[on_demand]]``. ``[[sql]]`` statements expand to
features in file order, after the ``[[features]]`` tables.

Paths: a relative ``store.path`` is resolved against the directory of the config file (not the current
directory), so a config means the same store whichever directory a command runs in. The example configs
live in ``configs/`` and use ``path = "../data/<name>"``: the repository's ``data/`` folder, which git
ignores. :func:`parse_config` resolves against ``base_dir``, else the directory of ``source`` when that is
a file path, else the current directory. ``~`` is expanded.

Errors: every problem is a :class:`ConfigError` (a :class:`~rayfs.errors.DefinitionError`) whose message
starts with ``<file>:<line>: <key path>:``, the key path counting array entries from 0, e.g.::

    configs/reddit.toml:21: features[0].agg: feature 'user_upvotes_7d': unknown aggregate 'cnt'; supported: ...
    configs/reddit.toml:14: streams[0].entitiy: unknown key 'entitiy' (did you mean 'entities'?); allowed keys:
        name, entities, timestamp
    configs/reddit.toml:8: store.shards: expected an integer, got a string ('4')
    configs/reddit.toml:28: features[1].name: duplicate feature name 'user_upvotes_7d' (first defined at line 18,
        features[0].name)
    configs/reddit.toml:53: sql[2].query: SQL reads unknown stream 'upvote' (streams in this config: upvotes)
    configs/reddit.toml:9: invalid TOML: Expected '=' after a key in a key/value pair (column 12)

A missing required key is reported at its table's header line.

tomllib reports no positions for values, so :class:`KeyLines` finds them by scanning the text itself (table
headers, array-of-tables occurrences and ``key =`` lines, skipping strings, comments and multi-line
values); a key without a line of its own (inside an inline table) is reported at its nearest enclosing
key that has one.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rayfs.errors import ConfigError, DefinitionError, OptionError, RayfsError, SqlError, WindowError
from rayfs.model.definitions import Feature, Stream, check_name

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["DEFAULT_NAMESPACE", "DURABILITY", "KeyLines", "OnDemandSpec", "ServeSettings", "StoreConfig",
           "StoreSettings", "dump_config", "format_path", "load_config", "parse_config"]

DURABILITY = ("sync", "group", "none")
"""The store's durability modes (as :meth:`FeatureStore.open <rayfs.store.FeatureStore.open>` takes them)."""
DEFAULT_NAMESPACE = "rayfs"

_TOP_KEYS = ("store", "streams", "features", "sql", "serve", "observations", "on_demand")
_ON_DEMAND_KEYS = ("name", "function", "inputs", "request", "description", "owner", "tags")
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")
_STORE_KEYS = ("name", "path", "shards", "durability", "namespace", "online_table")
_STREAM_KEYS = ("name", "entities", "timestamp")
_FEATURE_KEYS = ("name", "stream", "entity", "agg", "column", "window", "where", "k", "q", "description",
                 "owner", "tags")
_SQL_KEYS = ("query", "window", "description", "owner", "tags")
_SERVE_KEYS = ("port", "host", "token", "token_env", "max_keys", "num_replicas")

Path = tuple[str | int, ...]
"""A key path into the parsed document: ``("features", 2, "agg")``."""


def format_path(path: Path) -> str:
    """Render a key path as in error messages.

    >>> format_path(("features", 2, "agg")), format_path(("store",)), format_path(())
    ('features[2].agg', 'store', '')
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            out += f".{text}" if out else text
    return out


# --------------------------------------------------------------------------------------------------
# Finding the line of a key in TOML text
# --------------------------------------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_-]+")


class KeyLines:
    """The line of each table header and ``key =`` line of a (valid) TOML document, by key path.

    Array-of-tables entries are numbered from 0 in order of appearance, so ``[[features]]`` opens
    ``("features", 0)``, then ``("features", 1)``, ...; ``[features.meta]`` after them is
    ``("features", 1, "meta")``. Keys inside inline tables and multi-line arrays are not recorded:
    :meth:`line_of` answers with the nearest enclosing path that has a line.

    >>> lines = KeyLines('[store]\\npath = "x"\\n\\n[[features]]\\nname = "a"\\n[[features]]\\nname = "b"\\n')
    >>> lines.line_of(("store", "path")), lines.line_of(("features", 1)), lines.line_of(("features", 1, "name"))
    (2, 6, 7)
    >>> lines.line_of(("features", 1, "agg"))  # absent key: its table's header
    6
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[Path, int] = {}
        self._aot: dict[Path, int] = {}  # array-of-tables path -> entries so far
        table: Path = ()
        string: str | None = None  # the open multi-line string delimiter, if any
        depth = 0  # open [ / { of a value spanning lines
        for lineno, line in enumerate(text.split("\n"), start=1):
            if string is not None or depth > 0:
                string, depth = _scan(line, 0, string, depth)
                continue
            i = len(line) - len(line.lstrip(" \t"))
            if i == len(line) or line[i] in "#\r":
                continue
            if line[i] == "[":
                array = line.startswith("[[", i)
                keys, _ = _key(line, i + (2 if array else 1))
                table = self._table(keys, array)
                for n in range(1, len(table) + 1):  # an array of tables: the line of its first entry
                    self.lines.setdefault(table[:n], lineno)
                continue
            keys, j = _key(line, i)
            if not keys:  # not a key line (cannot happen in valid TOML): skip it
                continue
            for n in range(1, len(keys) + 1):
                self.lines.setdefault(table + keys[:n], lineno)
            eq = line.find("=", j)
            string, depth = _scan(line, eq + 1 if eq >= 0 else len(line), None, 0)

    def _resolve(self, keys: tuple[str, ...]) -> Path:
        path: Path = ()
        for k in keys:
            path += (k,)
            if path in self._aot:  # a header through an array of tables means its last entry
                path += (self._aot[path] - 1,)
        return path

    def _table(self, keys: tuple[str, ...], array: bool) -> Path:
        if not array:
            return self._resolve(keys)
        parent = self._resolve(keys[:-1]) + keys[-1:]
        n = self._aot.get(parent, 0)
        self._aot[parent] = n + 1
        return parent + (n,)

    def line_of(self, path: Path) -> int | None:
        """The line of ``path``, else of its longest prefix that has one; ``None`` if none does."""
        for n in range(len(path), 0, -1):
            line = self.lines.get(tuple(path[:n]))
            if line is not None:
                return line
        return None


def _key(line: str, i: int) -> tuple[tuple[str, ...], int]:
    """Parse a dotted key starting at ``line[i]``: (its parts, the index after it); () if none."""
    parts: list[str] = []
    n = len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            return tuple(parts), i
        c = line[i]
        if c == '"':
            j = i + 1
            while j < n and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            try:
                parts.append(tomllib.loads(f"k = {line[i:j + 1]}")["k"])
            except tomllib.TOMLDecodeError:
                parts.append(line[i + 1:j])
            i = j + 1
        elif c == "'":
            j = line.find("'", i + 1)
            j = n if j < 0 else j
            parts.append(line[i + 1:j])
            i = j + 1
        else:
            m = _BARE.match(line, i)
            if m is None:
                return tuple(parts), i
            parts.append(m.group())
            i = m.end()
        while i < n and line[i] in " \t":
            i += 1
        if i < n and line[i] == ".":
            i += 1
            continue
        return tuple(parts), i


def _scan(line: str, i: int, string: str | None, depth: int) -> tuple[str | None, int]:
    """Scan a value's text from ``line[i]``: the open multi-line string and bracket depth at its end."""
    n = len(line)
    while i < n:
        if string is not None:  # inside a multi-line string
            if string == '"""' and line[i] == "\\":
                i += 2
                continue
            if line.startswith(string, i):
                q = string[0]
                while i < n and line[i] == q:  # up to two quotes of the content may precede the delimiter
                    i += 1
                string = None
                continue
            i += 1
            continue
        c = line[i]
        if c == "#":
            break
        if c in "\"'":
            if line.startswith(c * 3, i):
                string = c * 3
                i += 3
                continue
            j = i + 1
            while j < n and line[j] != c:
                j += 2 if (c == '"' and line[j] == "\\") else 1
            i = j + 1
            continue
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return string, depth


# --------------------------------------------------------------------------------------------------
# The config objects
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreSettings:
    """A store's settings: the ``[store]`` table of a config, and what a running store's actors and every
    connected process (drivers, Ray Data workers) know of it.

    A config leaves ``shards`` unset to mean "4 for a new store, the existing count on reopen"; the settings
    of a running store (``FeatureStore.open`` decides them, the coordinator keeps them) always hold the
    store's actual shard count.

    Attributes:
        path: the store's data folder, absolute.
        name: the store's name (detached actors reachable with ``rayfs.connect(name)``), ``None`` for an
            embedded store owned by the driver that opens it.
        shards: the shard count; ``None`` means 4 for a new store and the existing count on reopen.
        durability: ``"sync"``, ``"group"`` or ``"none"``.
        namespace: the Ray namespace of the store's actors.
        segment_bytes: the log segment size at which a shard starts a new segment file.
        snapshot_every: a shard snapshots its state every this many batches (and on close).
        online_table: whether shards keep an online table (LMDB) that online reads use without waiting
            for ingests (see the README's "Online serving"); without it (the default) reads go through the
            shards' state.
    """

    path: str
    name: str | None = None
    shards: int | None = None
    durability: str = "sync"
    namespace: str = DEFAULT_NAMESPACE
    segment_bytes: int = 64 << 20
    snapshot_every: int = 200
    online_table: bool = False

    @property
    def store_id(self) -> str:
        """The id in the store's actor names: its name, or for an embedded store a digest of its path.

        >>> StoreSettings(path="/tmp/s", name="clicks").store_id
        'clicks'
        """
        return self.name if self.name else hashlib.sha1(self.path.encode()).hexdigest()[:12]

    def open_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``FeatureStore.open``: ``path``, ``shards``, ``name``, ``namespace``,
        ``durability``, ``online_table``.

        >>> StoreSettings(path="/tmp/s", shards=2).open_kwargs()["shards"]
        2
        """
        return {"path": self.path, "shards": self.shards, "name": self.name, "namespace": self.namespace,
                "durability": self.durability, "online_table": self.online_table}


@dataclass(frozen=True)
class ServeSettings:
    """The ``[serve]`` table: how ``rayfs serve --http`` serves features over HTTP (:mod:`rayfs.serve.http`).

    Attributes:
        port: the HTTP port to listen on; ``None`` serves HTTP only when ``--http PORT`` is given.
        host: the address to listen on (``"0.0.0.0"`` for every interface).
        token: the bearer token requests must carry. Prefer ``token_env`` so the secret stays out of the file.
        token_env: the environment variable holding the token (it must be set when the server starts).
            Without ``token`` and ``token_env`` the token comes from ``RAYFS_HTTP_TOKEN`` if set, else the
            server is open.
        max_keys: the most entity keys one request may ask for.
        num_replicas: Serve replicas, or ``"auto"`` to scale them with load.
    """

    port: int | None = None
    host: str = "127.0.0.1"
    token: str | None = dataclasses.field(default=None, repr=False)
    token_env: str | None = None
    max_keys: int = 1000
    num_replicas: int | str = 1


@dataclass(frozen=True)
class ObservationSubscription:
    """An ``[[observations]]`` table: an observation stream fed by a Kafka topic.

    Attributes:
        name: the observation stream (``training_set(name, ...)`` reads it).
        keys: the entity key columns every label carries.
        timestamp: the labels' time column.
        source: the :class:`rayfs.KafkaSource` of its ``[observations.kafka]`` table.
    """

    name: str
    keys: tuple[str, ...]
    timestamp: str
    source: Any


@dataclass(frozen=True)
class OnDemandSpec:
    """An ``[[on_demand]]`` table: an on-demand feature whose function is named by its import path.

    Attributes:
        name: the feature's name.
        function: ``"package.module:attribute"`` (the attribute may be dotted).
        inputs: stored features it reads (``name`` or ``name@version``).
        request: request fields it reads.
        description: free text.
        owner: who answers for it.
        tags: labels for discovery.

    >>> import math
    >>> OnDemandSpec("root", "math:sqrt").load() is math.sqrt
    True
    """

    name: str
    function: str
    inputs: tuple[str, ...] = ()
    request: tuple[str, ...] = ()
    description: str = ""
    owner: str = ""
    tags: tuple[str, ...] = ()

    def load(self) -> Any:
        """The function, imported.

        Raises:
            DefinitionError: its module cannot be imported or has no such attribute (naming the feature).
        """
        import importlib

        module, _, attr = self.function.partition(":")
        try:
            out: Any = importlib.import_module(module)
            for part in attr.split("."):
                out = getattr(out, part)
        except Exception as exc:  # noqa: BLE001 - any import failure of user code is the config's problem
            raise DefinitionError(f"on-demand feature {self.name!r}: cannot load function {self.function!r}: "
                                  f"{type(exc).__name__}: {exc}") from None
        if not callable(out):
            raise DefinitionError(f"on-demand feature {self.name!r}: {self.function!r} is not callable")
        return out

    def feature(self) -> Any:
        """The :class:`rayfs.OnDemandFeature` it declares, its function imported (see :meth:`load`)."""
        from rayfs.model.ondemand import OnDemandFeature

        return OnDemandFeature(name=self.name, function=self.load(), inputs=self.inputs, request=self.request,
                               description=self.description, owner=self.owner, tags=self.tags)


@dataclass(frozen=True)
class StoreConfig:
    """A parsed store config (see the module docstring).

    Attributes:
        store: the ``[store]`` settings.
        streams: the streams, in file order.
        features: the ``[[features]]`` in file order, then the features of each ``[[sql]]`` statement.
        source: the file the config was read from (``"<string>"`` for :func:`parse_config` by default).
        serve: the ``[serve]`` settings (defaults when the table is absent).
        kafka: ``(stream, rayfs.KafkaSource)`` of each ``[streams.kafka]`` table, in file order.
        observations: the ``[[observations]]`` tables, in file order.
        on_demand: the ``[[on_demand]]`` tables, in file order.
    """

    store: StoreSettings
    streams: tuple[Stream, ...] = ()
    features: tuple[Feature, ...] = ()
    source: str = "<string>"
    serve: ServeSettings = ServeSettings()
    kafka: tuple[tuple[str, Any], ...] = ()
    observations: tuple[ObservationSubscription, ...] = ()
    on_demand: tuple[OnDemandSpec, ...] = ()

    @property
    def stream_map(self) -> dict[str, Stream]:
        """The streams by name."""
        return {s.name: s for s in self.streams}

    @property
    def feature_map(self) -> dict[str, Feature]:
        """The features by name."""
        return {f.name: f for f in self.features}

    def apply(self, store) -> list[Feature]:
        """Register the streams, then the features, on an open store; returns the registered features.

        Args:
            store: a :class:`~rayfs.store.FeatureStore` (anything with ``register_stream`` and
                ``register_feature``). Registering an identical definition again is a no-op there, so
                applying a config twice changes nothing.
        """
        for s in self.streams:
            store.register_stream(s.name, entities=list(s.entities), timestamp=s.timestamp)
        return [store.register_feature(f) for f in self.features]

    def to_toml(self, *, relative_to: str | os.PathLike | None = None) -> str:
        """This config as TOML text that :func:`parse_config` reads back to an equal config.

        ``[[sql]]`` statements come out as the ``[[features]]`` they expanded to. Args: ``relative_to``:
        write ``store.path`` relative to this directory (e.g. where the text will be saved) instead of
        absolute.
        """
        return dump_config(self, relative_to=relative_to)


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike) -> StoreConfig:
    """Read and validate a store config file.

    Args:
        path: the TOML file; a relative ``store.path`` inside it is resolved against its directory.

    Returns:
        The :class:`StoreConfig`, whose ``source`` is ``path`` as given.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or describes an invalid store (the message
            names the file, line and key).
    """
    try:
        source = os.fspath(path)
    except TypeError:
        raise OptionError(f"a config is the path of a TOML file (str or os.PathLike), not {type(path).__name__}; "
                          "FeatureStore.apply also takes a StoreConfig") from None
    try:
        with open(source, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(source, None, "", f"cannot read config: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(source, line, "", f"invalid TOML: not UTF-8 ({exc.reason})") from None
    return parse_config(text, source, base_dir=os.path.dirname(os.path.abspath(source)))


def parse_config(text: str, source: str = "<string>", *, base_dir: str | os.PathLike | None = None) -> StoreConfig:
    """Parse and validate a store config from TOML text.

    Args:
        text: the TOML document.
        source: the name used in error messages and kept as :attr:`StoreConfig.source`.
        base_dir: the directory a relative ``store.path`` is relative to; by default the directory of
            ``source`` if it names a file, else the current directory.

    Raises:
        ConfigError: see :func:`load_config`.

    >>> cfg = parse_config('''
    ... [store]
    ... path = "/tmp/rayfs-example"
    ... [[streams]]
    ... name = "clicks"
    ... entities = ["user"]
    ... timestamp = "ts"
    ... [[sql]]
    ... query = "SELECT user, COUNT(*) AS user_clicks FROM clicks GROUP BY user"
    ... window = "1h"
    ... ''')
    >>> cfg.store.shards, [(f.name, f.agg, f.window) for f in cfg.features]
    (None, [('user_clicks', 'count', '1h')])
    >>> parse_config('[store]\\npath = "x"\\nshards = "4"\\n')
    Traceback (most recent call last):
    ...
    rayfs.errors.ConfigError: <string>:3: store.shards: expected an integer, got a string ('4')
    """
    if not isinstance(text, str):
        raise ConfigError(source, None, "", f"parse_config takes TOML text (str), not {type(text).__name__}")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(exc, text, source) from None
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(source)) if not source.startswith("<") else os.getcwd()
    return _Parser(source, KeyLines(text)).config(doc, os.fspath(base_dir))


_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _syntax_error(exc: tomllib.TOMLDecodeError, text: str, source: str) -> ConfigError:
    msg = str(exc)
    m = _POS.search(msg)
    if m:
        return ConfigError(source, int(m.group(1)), "", f"invalid TOML: {msg[:m.start()]} (column {m.group(2)})")
    if msg.endswith("(at end of document)"):
        line = text.count("\n") + (0 if text.endswith("\n") else 1)
        return ConfigError(source, max(line, 1), "", f"invalid TOML: {msg[:-len(' (at end of document)')]} "
                                                     "(at end of document)")
    return ConfigError(source, None, "", f"invalid TOML: {msg}")


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
               dict: "a table", _dt.datetime: "a date-time", _dt.date: "a date", _dt.time: "a time"}


def _type_name(value: object) -> str:
    for t, name in _TYPE_NAMES.items():  # bool before int, datetime before date
        if isinstance(value, t):
            return name
    return type(value).__name__


class _Parser:
    def __init__(self, source: str, lines: KeyLines) -> None:
        self.source = source
        self.lines = lines

    def error(self, path: Path, reason: str) -> ConfigError:
        return ConfigError(self.source, self.lines.line_of(path), format_path(path), reason)

    # -- generic checks ------------------------------------------------------------------------------

    def table(self, doc: Mapping, path: Path, allowed: Sequence[str], required: Sequence[str]) -> None:
        for key in doc:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.error(path + (key,), f"unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}")
        for key in required:
            if key not in doc:
                raise self.error(path, f"missing required key {key!r}")

    def typed(self, doc: Mapping, path: Path, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        if key not in doc:
            return default
        value = doc[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            want = " or ".join(_TYPE_NAMES[k] for k in kinds)
            raise self.error(path + (key,), f"expected {want}, got {_type_name(value)} ({value!r})")
        return value

    def string(self, doc: Mapping, path: Path, key: str, default: Any = None, *, empty: bool = False) -> Any:
        value = self.typed(doc, path, key, str, default)
        if key in doc and not empty and not value.strip():
            raise self.error(path + (key,), "must not be empty")
        return value

    def strings(self, doc: Mapping, path: Path, key: str) -> tuple[str, ...] | None:
        value = self.typed(doc, path, key, list)
        if value is None:
            return None
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(path + (key,), f"expected an array of strings, item {i} is {_type_name(item)} "
                                                f"({item!r})")
        return tuple(value)

    def array(self, doc: Mapping, key: str) -> list[dict]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error((key,), f"expected an array of tables ([[{key}]] sections), got {_type_name(value)}")
        return value

    def name(self, value: str, path: Path, what: str) -> None:
        try:
            check_name(value, what)
        except DefinitionError as exc:
            raise self.error(path, str(exc)) from None

    # -- the sections --------------------------------------------------------------------------------

    def config(self, doc: dict, base_dir: str) -> StoreConfig:
        self.table(doc, (), _TOP_KEYS, ("store",))
        if not isinstance(doc["store"], dict):
            raise self.error(("store",), f"expected a table ([store]), got {_type_name(doc['store'])}")
        store = self.store(doc["store"], base_dir)
        streams: dict[str, Stream] = {}
        kafka: list[tuple[str, Any]] = []
        seen: dict[str, Path] = {}
        for i, entry in enumerate(self.array(doc, "streams")):
            s = self.stream(entry, ("streams", i))
            self.unique(s.name, ("streams", i, "name"), seen, "stream")
            streams[s.name] = s
            if "kafka" in entry:
                kafka.append((s.name, self.kafka(entry["kafka"], ("streams", i, "kafka"), s.name)))
        features: list[Feature] = []
        seen = {}
        for i, entry in enumerate(self.array(doc, "features")):
            f = self.feature(entry, ("features", i), streams)
            self.unique(f.name, ("features", i, "name"), seen, "feature")
            features.append(f)
        for i, entry in enumerate(self.array(doc, "sql")):
            for f in self.sql(entry, ("sql", i), streams):
                self.unique(f.name, ("sql", i, "query"), seen, "feature")
                features.append(f)
        on_demand: list[OnDemandSpec] = []
        for i, entry in enumerate(self.array(doc, "on_demand")):
            od = self.on_demand(entry, ("on_demand", i))
            self.unique(od.name, ("on_demand", i, "name"), seen, "feature")
            on_demand.append(od)
        serve = self.serve(doc["serve"]) if "serve" in doc else ServeSettings()
        observations: list[ObservationSubscription] = []
        seen = {}
        for i, entry in enumerate(self.array(doc, "observations")):
            o = self.observation(entry, ("observations", i), streams)
            self.unique(o.name, ("observations", i, "name"), seen, "observation stream")
            observations.append(o)
        return StoreConfig(store=store, streams=tuple(streams.values()), features=tuple(features),
                           source=self.source, serve=serve, kafka=tuple(kafka), observations=tuple(observations),
                           on_demand=tuple(on_demand))

    def unique(self, name: str, path: Path, seen: dict[str, Path], what: str) -> None:
        if name in seen:
            first = seen[name]
            raise self.error(path, f"duplicate {what} name {name!r} (first defined at line "
                                   f"{self.lines.line_of(first)}, {format_path(first)})")
        seen[name] = path

    def store(self, doc: dict, base_dir: str) -> StoreSettings:
        p: Path = ("store",)
        self.table(doc, p, _STORE_KEYS, ("path",))
        path = self.string(doc, p, "path")
        path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))
        name = self.string(doc, p, "name")
        if name is not None:
            self.name(name, p + ("name",), "store")
        shards = self.typed(doc, p, "shards", int)
        if shards is not None and shards < 1:
            raise self.error(p + ("shards",), f"must be a positive integer, not {shards}")
        durability = self.string(doc, p, "durability", "sync")
        if durability not in DURABILITY:
            raise self.error(p + ("durability",), f"must be one of {', '.join(DURABILITY)}, not {durability!r}")
        namespace = self.string(doc, p, "namespace", DEFAULT_NAMESPACE)
        online_table = self.typed(doc, p, "online_table", bool, False)
        return StoreSettings(path=path, name=name, shards=shards, durability=durability, namespace=namespace,
                             online_table=online_table)

    def serve(self, doc: Any) -> ServeSettings:
        p: Path = ("serve",)
        if not isinstance(doc, dict):
            raise self.error(p, f"expected a table ([serve]), got {_type_name(doc)}")
        self.table(doc, p, _SERVE_KEYS, ())
        port = self.typed(doc, p, "port", int)
        if port is not None and not 1 <= port <= 65535:
            raise self.error(p + ("port",), f"must be a TCP port (1-65535), not {port}")
        host = self.string(doc, p, "host", "127.0.0.1")
        token = self.string(doc, p, "token")
        token_env = self.string(doc, p, "token_env")
        if token is not None and token_env is not None:
            raise self.error(p + ("token_env",), "give token or token_env, not both")
        max_keys = self.typed(doc, p, "max_keys", int, 1000)
        if max_keys < 1:
            raise self.error(p + ("max_keys",), f"must be a positive integer, not {max_keys}")
        replicas = self.typed(doc, p, "num_replicas", (int, str), 1)
        if replicas != "auto" and (not isinstance(replicas, int) or replicas < 1):
            raise self.error(p + ("num_replicas",), f"must be a positive integer or \"auto\", not {replicas!r}")
        return ServeSettings(port=port, host=host, token=token, token_env=token_env, max_keys=max_keys,
                             num_replicas=replicas)

    def stream(self, doc: dict, p: Path) -> Stream:
        self.table(doc, p, (*_STREAM_KEYS, "kafka"), _STREAM_KEYS)
        name = self.string(doc, p, "name")
        self.name(name, p + ("name",), "stream")
        entities = self.strings(doc, p, "entities")
        for e in entities:
            self.name(e, p + ("entities",), f"stream {name!r} entity")
        timestamp = self.string(doc, p, "timestamp")
        self.name(timestamp, p + ("timestamp",), f"stream {name!r} timestamp")
        try:
            return Stream(name=name, entities=entities, timestamp=timestamp)
        except RayfsError as exc:
            key = "timestamp" if "timestamp" in str(exc) else "entities"
            raise self.error(p + (key,), str(exc)) from None

    def observation(self, doc: dict, p: Path, streams: Mapping[str, Stream]) -> ObservationSubscription:
        self.table(doc, p, ("name", "keys", "timestamp", "kafka"), ("name", "keys", "kafka"))
        name = self.string(doc, p, "name")
        self.name(name, p + ("name",), "observation stream")
        if name in streams:
            raise self.error(p + ("name",), f"{name!r} is an event stream of this config; an observation "
                                            "stream needs a name of its own")
        keys = self.strings(doc, p, "keys")
        if not keys:
            raise self.error(p + ("keys",), f"observation stream {name!r}: give at least one key column")
        for k in keys:
            self.name(k, p + ("keys",), f"observation stream {name!r} key")
        timestamp = self.string(doc, p, "timestamp", "ts")
        self.name(timestamp, p + ("timestamp",), f"observation stream {name!r} timestamp")
        if timestamp in keys:
            raise self.error(p + ("timestamp",), f"observation stream {name!r}: the time column "
                                                 f"{timestamp!r} is also a key column")
        source = self.kafka(doc["kafka"], p + ("kafka",), name, what="observations")
        return ObservationSubscription(name=name, keys=keys, timestamp=timestamp, source=source)

    def kafka(self, doc: Any, p: Path, stream: str, what: str = "streams"):
        """A ``[streams.kafka]`` (or ``[observations.kafka]``) table: the arguments of :class:`rayfs.KafkaSource`."""
        # KafkaSource is a plain, Ray-free description; its own checks give the reasons.
        from rayfs.model.kafka import KafkaSource  # late: a config without Kafka needs none of it

        if not isinstance(doc, dict):
            raise self.error(p, f"expected a table ([{what}.kafka]), got {_type_name(doc)}")
        keys = tuple(KafkaSource.__dataclass_fields__)
        self.table(doc, p, keys, ("topic", "bootstrap_servers"))
        for k in ("topic", "bootstrap_servers", "format", "start", "timestamp", "on_offset_reset"):
            self.string(doc, p, k)
        for k, kind in (("consumers", int), ("max_batch_rows", int), ("catch_up", int), ("max_delay", (int, float)),
                        ("consumer_config", dict)):
            self.typed(doc, p, k, kind)
        try:
            return KafkaSource(**doc)
        except RayfsError as exc:
            key = next((k for k in keys if f" {k} " in f" {exc} " or f"{k} must" in str(exc)), None)
            raise self.error(p + ((key,) if key in doc else ()), f"stream {stream!r}: {exc}") from None

    def feature(self, doc: dict, p: Path, streams: Mapping[str, Stream]) -> Feature:
        self.table(doc, p, _FEATURE_KEYS, ("name", "stream", "entity", "agg"))
        kw: dict[str, Any] = {k: self.string(doc, p, k) for k in ("name", "stream", "entity", "agg")}
        for k in ("column", "window", "where"):
            kw[k] = self.string(doc, p, k)
        kw["k"] = self.typed(doc, p, "k", int)
        kw["q"] = self.typed(doc, p, "q", (int, float))
        for k in ("description", "owner"):
            kw[k] = self.string(doc, p, k, "", empty=True)
        kw["tags"] = self.strings(doc, p, "tags") or ()
        name = kw["name"]
        self.name(name, p + ("name",), "feature")
        self.reference(kw["stream"], kw["entity"], p, streams, "stream", f"feature {name!r}")
        if kw["column"] is not None:
            self.name(kw["column"], p + ("column",), f"feature {name!r} column")
        try:
            return Feature(**kw)
        except RayfsError as exc:
            raise self.error(p + (_blame(exc, doc),), str(exc)) from None

    def on_demand(self, doc: dict, p: Path) -> OnDemandSpec:
        self.table(doc, p, _ON_DEMAND_KEYS, ("name", "function"))
        name = self.string(doc, p, "name")
        self.name(name, p + ("name",), "on-demand feature")
        function = self.string(doc, p, "function")
        if not _IMPORT_PATH.fullmatch(function):
            raise self.error(p + ("function",), f"on-demand feature {name!r}: function must be an import path "
                                                f"'package.module:attribute', not {function!r}")
        return OnDemandSpec(name=name, function=function, inputs=self.strings(doc, p, "inputs") or (),
                            request=self.strings(doc, p, "request") or (),
                            description=self.string(doc, p, "description", "", empty=True),
                            owner=self.string(doc, p, "owner", "", empty=True),
                            tags=self.strings(doc, p, "tags") or ())

    def sql(self, doc: dict, p: Path, streams: Mapping[str, Stream]) -> list[Feature]:
        from rayfs.model.sql import features_from_sql

        self.table(doc, p, _SQL_KEYS, ("query",))
        query = self.string(doc, p, "query")
        window = self.string(doc, p, "window")
        description = self.string(doc, p, "description", "", empty=True)
        owner = self.string(doc, p, "owner", "", empty=True)
        tags = self.strings(doc, p, "tags") or ()
        try:
            feats = features_from_sql(query, window=window, description=description)
        except RayfsError as exc:
            raise self.error(p + ("window" if isinstance(exc, WindowError) else "query",), str(exc)) from None
        self.reference(feats[0].stream, feats[0].entity, p + ("query",), streams, "query", "SQL")
        try:
            return [dataclasses.replace(f, owner=owner, tags=tags) for f in feats]
        except RayfsError as exc:
            raise self.error(p + ("owner" if "owner" in str(exc) else "tags",), str(exc)) from None

    def reference(self, stream: str, entity: str, p: Path, streams: Mapping[str, Stream], key: str,
                  what: str) -> None:
        """Check that ``stream`` is a stream of this config and ``entity`` one of its entities."""
        known = ", ".join(streams) or "none"
        if stream not in streams:
            path = p + ("stream",) if key == "stream" else p
            raise self.error(path, f"{what} reads unknown stream {stream!r} (streams in this config: {known})")
        if entity not in streams[stream].entities:
            path = p + ("entity",) if key == "stream" else p
            raise self.error(path, f"{what} groups by {entity!r}, which is not an entity of stream {stream!r} "
                                   f"(entities: {', '.join(streams[stream].entities)})")


def _blame(exc: RayfsError, doc: Mapping) -> str:
    """The ``[[features]]`` key a Feature construction error is about (names were checked before)."""
    if isinstance(exc, WindowError):
        return "window"
    if isinstance(exc, SqlError):
        return "where"
    msg = re.sub(r"^feature '[^']*': ", "", str(exc))  # the feature's own name must not match below
    for key, pattern in (("k", r"\bk must\b|parameter k\b"), ("q", r"\bq must\b|parameter q\b"),
                         ("tags", r"\btags\b"), ("where", r"\bwhere\b"), ("owner", r"\bowner\b"),
                         ("description", r"\bdescription\b")):
        if re.search(pattern, msg):
            if key in ("k", "q") and key not in doc:
                return "agg"  # 'needs parameter k': the aggregate asks for it
            return key
    return "agg"


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(v: Any, key: str) -> str:
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x, key) for x in v) + "]"
    raise DefinitionError(f"{key}: cannot write {v!r} ({type(v).__name__}) as TOML")


def _kafka_lines(source: Any, owner: str) -> list[str]:
    """The lines of a ``[*.kafka]`` table for ``source`` (a :class:`rayfs.KafkaSource`)."""
    out = []
    for k, v in source.to_dict().items():
        where = f"{owner}: kafka.{k}"
        if k == "consumer_config":
            if v:
                out.append(f"{k} = {{ " + ", ".join(f"{_toml_str(a)} = {_toml_value(b, where)}"
                                                      for a, b in v.items()) + " }")
        elif v is not None:
            out.append(f"{k} = {_toml_value(v, where)}")
    return out


def dump_config(config: StoreConfig, *, relative_to: str | os.PathLike | None = None) -> str:
    """Render ``config`` as TOML (see :meth:`StoreConfig.to_toml`).

    >>> cfg = StoreConfig(store=StoreSettings(path="/data/x", shards=2),
    ...                   streams=(Stream(name="s", entities=("u",), timestamp="ts"),),
    ...                   features=(Feature(name="n", stream="s", entity="u", agg="count", window="7d"),))
    >>> print(dump_config(cfg))
    [store]
    path = "/data/x"
    shards = 2
    durability = "sync"
    namespace = "rayfs"
    <BLANKLINE>
    [[streams]]
    name = "s"
    entities = ["u"]
    timestamp = "ts"
    <BLANKLINE>
    [[features]]
    name = "n"
    stream = "s"
    entity = "u"
    agg = "count"
    window = "7d"
    <BLANKLINE>
    >>> parse_config(dump_config(cfg)) == dataclasses.replace(cfg, source="<string>")
    True
    """
    st = config.store
    path = st.path if relative_to is None else os.path.relpath(st.path, os.fspath(relative_to))
    out = ["[store]"]
    if st.name is not None:
        out.append(f"name = {_toml_str(st.name)}")
    out.append(f"path = {_toml_str(path)}")
    if st.shards is not None:
        out.append(f"shards = {st.shards}")
    out += [f"durability = {_toml_str(st.durability)}", f"namespace = {_toml_str(st.namespace)}"]
    if st.online_table:
        out.append("online_table = true")
    if config.serve != ServeSettings():
        out += ["", "[serve]"] + [f"{k} = {_toml_value(getattr(config.serve, k), f'serve: {k}')}" for k in _SERVE_KEYS
                                  if getattr(config.serve, k) is not None]
    kafka = dict(config.kafka)
    for s in config.streams:
        out += ["", "[[streams]]"] + [f"{k} = {_toml_value(v, f'stream {s.name!r}: {k}')}"
                                         for k, v in s.to_dict().items()]
        if s.name in kafka:
            out += ["", "[streams.kafka]"] + _kafka_lines(kafka[s.name], f"stream {s.name!r}")
    for o in config.observations:
        out += ["", "[[observations]]", f"name = {_toml_str(o.name)}",
                f"keys = {_toml_value(o.keys, f'observation stream {o.name!r}: keys')}",
                f"timestamp = {_toml_str(o.timestamp)}", "", "[observations.kafka]"]
        out += _kafka_lines(o.source, f"observation stream {o.name!r}")
    for f in config.features:
        out += ["", "[[features]]"]
        for k in _FEATURE_KEYS:
            v = getattr(f, k)
            if v is not None and v != "" and v != ():
                out.append(f"{k} = {_toml_value(v, f'feature {f.name!r}: {k}')}")
    for od in config.on_demand:
        out += ["", "[[on_demand]]"]
        for k in _ON_DEMAND_KEYS:
            v = getattr(od, k)
            if v != "" and v != ():
                out.append(f"{k} = {_toml_value(v, f'on-demand feature {od.name!r}: {k}')}")
    return "\n".join(out) + "\n"
