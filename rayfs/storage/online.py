"""The online table: finalised feature values per entity key, in LMDB, readable by other processes.

A shard writes; any number of processes on its node read, without a call to the shard and without ever
waiting for it: LMDB gives each read transaction an MVCC snapshot and never blocks the writer or a reader.

Layout and invariants
---------------------
* One LMDB environment per shard (``<shard dir>/online.lmdb``), written only by that shard's process.
* A row holds the values of every feature of one ``(stream, entity field)`` for one entity key, as a
  msgpack array in the order of that group's **layout** (a list of feature keys). Its LMDB key is
  ``b"r" | stream | 0x1f | entity | 0x1f | encoded key`` (see :func:`encode_key`).
* ``b"meta"`` holds ``{"layouts": {"<stream>\\x1f<entity>": [feature keys]}, "watermark": {stream: µs},
  "cv": catalog version, "offset": first log offset not reflected}``.
* Every change is one write transaction (rows and meta together), committed after the shard folded a
  batch and before it acknowledges it: a reader sees batch k or batch k-1 whole, never a mix, and after
  ``ingest`` returns every reader sees that batch.
* The table is derived state: it is not fsynced, and a shard rebuilds it from its state when it opens
  (:meth:`OnlineTable.clear` then a full write), so a crash can only lose what recovery rewrites.
* A key whose encoding exceeds LMDB's key limit is stored under a digest of it; the row then carries the
  key itself as its first element, and readers check it (so a digest collision can never answer for the
  wrong key).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import lmdb
import msgpack
import numpy as np

__all__ = ["OnlineReader", "OnlineTable", "encode_key", "row_prefix", "rows_to_values"]

_MAP_SIZE = 1 << 40  # address space only; the file grows with use
_MAX_KEY = 400  # LMDB's default key limit is 511 bytes; the prefix needs room too
_META = b"meta"
_INT = struct.Struct(">q")


def row_prefix(stream: str, entity: str) -> bytes:
    """The LMDB key prefix of the rows of ``(stream, entity)``."""
    return b"r" + stream.encode() + b"\x1f" + entity.encode() + b"\x1f"


def encode_key(key: Any) -> bytes:
    """An entity key as bytes: ``i`` + 8-byte big-endian int64, or ``s`` + UTF-8 (lone surrogates kept).

    >>> encode_key(7), encode_key("7")
    (b'i\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x07', b's7')
    """
    if isinstance(key, str):
        return b"s" + key.encode("utf-8", "surrogatepass")
    return b"i" + _INT.pack(int(key))


def _db_key(prefix: bytes, key: Any) -> tuple[bytes, bool]:
    raw = prefix + encode_key(key)
    if len(raw) <= _MAX_KEY:
        return raw, False
    return prefix + b"h" + hashlib.blake2b(raw, digest_size=32).digest(), True


class OnlineTable:
    """The writer of one shard's online table."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        # Derived state: no fsync (recovery rewrites it), so a write costs memory copies only.
        self._env = lmdb.open(self.path, map_size=_MAP_SIZE, subdir=True, sync=False, metasync=False,
                              max_readers=1024)

    def clear(self) -> None:
        """Drop every row and the meta entry (before a full rewrite)."""
        with self._env.begin(write=True) as txn:
            txn.drop(self._env.open_db(), delete=False)

    @staticmethod
    def encode_keys(stream: str, entity: str, keys: Sequence[Any]) -> list[tuple[bytes, bool]]:
        """The LMDB keys of ``keys``' rows (and whether each is a digest), for a caller to cache and pass to
        :meth:`write` as ``encoded``."""
        prefix = row_prefix(stream, entity)
        return [_db_key(prefix, k) for k in keys]

    def write(self, groups: Iterable[tuple], meta: dict[str, Any], *, replace: bool = False) -> int:
        """Write rows and the meta entry in one transaction; returns the number of rows written.

        Args:
            groups: ``(stream, entity, layout, keys, columns)`` or ``(..., columns, encoded)``:
                ``columns[j][i]`` is the value of feature ``layout[j]`` for ``keys[i]``; ``encoded[i]`` is
                :meth:`encode_keys` of ``keys[i]`` when the caller has it. A group whose layout differs from
                the stored one must carry every key of the group (it is rewritten; old rows are dropped).
            meta: watermark, catalog version and offset; the layouts are added here.
            replace: drop every row first (in the same transaction: readers never see an empty table).
        """
        n = 0
        with self._env.begin(write=True) as txn:
            if replace:
                txn.drop(self._env.open_db(), delete=False)
            old = _load_meta(txn)
            layouts = dict(old.get("layouts", {})) if old else {}
            pack = msgpack.Packer(use_bin_type=True).pack
            for stream, entity, layout, keys, columns, *known in groups:
                prefix = row_prefix(stream, entity)
                name = f"{stream}\x1f{entity}"
                if layouts.get(name) != list(layout):
                    _drop_prefix(txn, prefix)
                    layouts[name] = list(layout)
                encoded = known[0] if known else [_db_key(prefix, k) for k in keys]
                rows = zip(*columns, strict=True) if columns else ([] for _ in keys)
                items = [(db_key, pack([key, *row] if hashed else list(row)))
                         for key, (db_key, hashed), row in zip(keys, encoded, rows, strict=True)]
                with txn.cursor() as cur:
                    cur.putmulti(items)
                n += len(items)
            txn.put(_META, msgpack.packb(dict(meta, layouts=layouts), use_bin_type=True))
        return n

    def read(self, requests: Sequence[tuple[str, str, Sequence[Any]]]) -> tuple[dict[str, Any], list[list]]:
        """As :meth:`OnlineReader.read`, in the writer's process (LMDB opens an environment once per process)."""
        return _read(self._env, requests)

    def close(self) -> None:
        self._env.close()

    @classmethod
    def discard(cls, path: str | os.PathLike) -> None:
        """Delete the table's files (it is rebuilt from the shard's state)."""
        shutil.rmtree(os.fspath(path), ignore_errors=True)


class OnlineReader:
    """A read-only view of one shard's online table, for any process on the shard's node."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._env = lmdb.open(self.path, map_size=_MAP_SIZE, subdir=True, readonly=True, lock=True,
                              max_readers=1024)

    def read(self, requests: Sequence[tuple[str, str, Sequence[Any]]]) -> tuple[dict[str, Any], list[list]]:
        """Rows for several ``(stream, entity, keys)`` groups, all from one consistent snapshot.

        Returns:
            ``(meta, rows)``: ``rows[g][i]`` is the value list (in the group's layout) of key ``i`` of group
            ``g``, or ``None`` for a key the shard never saw. ``meta`` is ``{}`` before the first write.
        """
        return _read(self._env, requests)

    def close(self) -> None:
        self._env.close()


def _read(env, requests) -> tuple[dict[str, Any], list[list]]:
    out = []
    with env.begin(buffers=False) as txn:
        meta = _load_meta(txn) or {}
        for stream, entity, keys in requests:
            prefix = row_prefix(stream, entity)
            group = []
            for key in keys:
                db_key, hashed = _db_key(prefix, key)
                raw = txn.get(db_key)
                row = None if raw is None else msgpack.unpackb(raw, raw=False, strict_map_key=False)
                if hashed and row is not None:
                    row = row[1:] if row[0] == key else None
                group.append(row)
            out.append(group)
    return meta, out


def _load_meta(txn) -> dict[str, Any] | None:
    raw = txn.get(_META)
    return None if raw is None else msgpack.unpackb(raw, raw=False, strict_map_key=False)


def _drop_prefix(txn, prefix: bytes) -> None:
    with txn.cursor() as cur:
        if not cur.set_range(prefix):
            return
        while cur.key().startswith(prefix):
            if not cur.delete():
                break


def rows_to_values(meta: dict, streams: dict[str, list[str]], entity: str, rows: list[list]) -> dict | None:
    """Turn table rows into ``{"cv": version, "values": {feature key: (present, values)}}``: ``present`` a
    mask over the keys asked for (False: a key the shard never saw, which gets the empty value), ``values``
    the list of values of the present keys. ``None`` if a feature is not in its group's layout."""
    layouts = meta.get("layouts", {})
    values: dict[str, Any] = {}
    for (stream, names), group in zip(streams.items(), rows, strict=True):
        layout = layouts.get(f"{stream}\x1f{entity}")
        if layout is None:
            if any(r is not None for r in group):
                return None
            layout = []
        index = {k: j for j, k in enumerate(layout)}
        if any(n not in index for n in names):
            return None
        mask = np.fromiter((r is not None for r in group), bool, len(group))
        for n in names:
            j = index[n]
            values[n] = (mask, [r[j] for r in group if r is not None])
    return {"cv": meta.get("cv", 0), "values": values}
