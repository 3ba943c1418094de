"""The online table: finalised feature values per entity key, in LMDB, readable by other processes.

A shard writes; any number of processes on its node read, without a call to the shard and without ever
waiting for it: LMDB gives each read transaction an MVCC snapshot and never blocks the writer or a reader.

Layout and invariants
---------------------
* One LMDB environment per shard (``<shard dir>/online.lmdb``), written only by that shard's process.
* A row holds the values of every feature of one ``(stream, entity field)`` for one entity key, in the
  order of that group's **layout** (a list of feature keys). Its LMDB key is
  ``b"r" | stream | 0x1f | entity | 0x1f | encoded key`` (see :func:`encode_key`).
* A group's **codec** (:class:`RowCodec`) says how its rows are encoded: per layout position, the numpy
  dtype of a fixed-width value (``"<i8"``, ``"<f8"``, ``"|b1"``, ...) or ``"o"`` for any other value. A
  row is the numeric values packed little-endian, back to back in layout order (a numpy structured
  record, so a batch of rows is encoded and a batch of reads decoded without per-value Python), followed,
  when the group has ``"o"`` values or the key is stored as a digest, by a msgpack array of the ``"o"``
  values in layout order (and the key).
* ``b"meta"`` holds ``{"layouts": {"<stream>\\x1f<entity>": [feature keys]}, "codecs": {same: [dtypes]},
  "watermark": {stream: µs}, "cv": catalog version, "offset": first log offset not reflected, ...}``, and
  ``"closed": true`` once its shard stopped serving (a clean close; cleared when a shard opens it again).
* A group without features (no layout entries) has no rows.
* Every change is one write transaction (rows and meta together), committed after the shard folded a
  batch and before it acknowledges it: a reader sees batch k or batch k-1 whole, never a mix, and after
  ``ingest`` returns every reader sees that batch.
* The table is derived state: it is not fsynced, and a shard rebuilds it from its state when it opens
  (:meth:`OnlineTable.clear` then a full write), so a crash can only lose what recovery rewrites.
* A key whose encoding exceeds LMDB's key limit is stored under a digest of it; the row then carries the
  key itself as the last element of its msgpack array, and readers check it (so a digest collision can
  never answer for the wrong key).
"""

from __future__ import annotations

import hashlib
import operator
import os
import shutil
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import lmdb
import msgpack
import numpy as np

__all__ = ["FORMAT", "OnlineReader", "OnlineTable", "RowCodec", "encode_key", "meta_of", "row_prefix",
           "rows_to_values"]

FORMAT = 2
"""The row format this module writes (meta ``"format"``); a table of another format is rebuilt by its shard."""

_MAP_SIZE = 1 << 40  # address space only; the file grows with use
_MAX_KEY = 400  # LMDB's default key limit is 511 bytes; the prefix needs room too
_META = b"meta"
_INT = struct.Struct(">q")
_OBJECT = "o"
_STRUCT = {"i1": "b", "i2": "h", "i4": "i", "i8": "q", "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "f2": "e",
           "f4": "f", "f8": "d", "b1": "?"}  # numpy dtype (without byte order) -> struct code of standard size


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


def _array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` elements."""
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big") if n < 1 << 16 else \
        b"\xdd" + n.to_bytes(4, "big")


def _kind(values: Any) -> str:
    """The codec entry of a column: its little-endian dtype if fixed-width numeric, else ``"o"``."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.str[1:] in _STRUCT:
        return values.dtype.newbyteorder("<").str
    return _OBJECT


def _objects(values: Any) -> list:
    """A column as a list of Python values (numpy scalars of an object array are left as they are)."""
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


class RowCodec:
    """How the rows of one group are encoded (see the module's layout notes).

    Args:
        kinds: per layout position, a little-endian numpy dtype string of a fixed-width numeric value or
            ``"o"`` (msgpack).
    """

    def __init__(self, kinds: Sequence[str]) -> None:
        self.kinds = list(kinds)
        self.numeric = [j for j, k in enumerate(self.kinds) if k != _OBJECT]
        self.objects = [j for j, k in enumerate(self.kinds) if k == _OBJECT]
        self.dtype = np.dtype([(f"f{j}", self.kinds[j]) for j in self.numeric])
        self.width = self.dtype.itemsize
        self._struct = struct.Struct("<" + "".join(_STRUCT[self.kinds[j][1:]] for j in self.numeric))
        self._header = _array_header(len(self.objects))
        self._header_key = _array_header(len(self.objects) + 1)

    @classmethod
    def of(cls, columns: Sequence[Any]) -> RowCodec:
        """The codec of a group's value columns."""
        return cls([_kind(c) for c in columns])

    def encode(self, columns: Sequence[Any], n: int, hashed: Sequence[int] = (),
               keys: Sequence[Any] = ()) -> list[bytes]:
        """The ``n`` rows of ``columns`` (``columns[j][i]``: position ``j`` of row ``i``). Rows ``hashed``
        (positions) carry their key ``keys[i]`` too."""
        parts: list[list[bytes]] = []
        if self.width:
            rec = np.empty(n, self.dtype)
            for j in self.numeric:
                rec[f"f{j}"] = columns[j]
            parts.append(rec.view(f"V{self.width}").tolist())  # one bytes object per row, no Python per value
        objs = [_objects(columns[j]) for j in self.objects]
        if objs:
            pack = msgpack.Packer(use_bin_type=True).pack
            head = self._header
            parts.append([head + b for b in map(pack, objs[0])])
            parts += [list(map(pack, col)) for col in objs[1:]]
        if not parts:
            rows: list[bytes] = [b""] * n
        elif len(parts) == 1:
            rows = parts[0]
        elif len(parts) == 2:
            rows = list(map(operator.add, parts[0], parts[1]))
        else:
            rows = [b"".join(t) for t in zip(*parts, strict=True)]
        if len(hashed):
            pack = msgpack.Packer(use_bin_type=True).pack
            for i in hashed:
                tail = self._header_key + b"".join(pack(col[i]) for col in objs) + pack(keys[i])
                rows[i] = (parts[0][i] if self.width else b"") + tail
        return rows

    def decode(self, raws: Sequence[bytes],
               hashed_keys: Sequence[Any] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Decode rows: ``(ok, columns)``, ``columns[j]`` the values of layout position ``j`` of the rows with
        ``ok`` (a row stored under a digest whose key is not ``hashed_keys[i]`` is not ok).

        Args:
            raws: the rows.
            hashed_keys: per row, the key asked for if the row is stored under a digest, else ``None``;
                ``None`` when no row is.
        """
        n = len(raws)
        w = self.width
        tails: list[list] | None = None
        ok = np.ones(n, dtype=bool)
        if self.objects or hashed_keys is not None:
            unpack = msgpack.unpackb
            if self.objects and n > 1:  # every row has a tail: one array of them, unpacked in one call
                tails = unpack(_array_header(n) + b"".join([r[w:] for r in raws]), raw=False, strict_map_key=False)
            else:
                tails = [unpack(r[w:], raw=False, strict_map_key=False) if len(r) > w else [] for r in raws]
            if hashed_keys is not None:
                for i, key in enumerate(hashed_keys):
                    if key is not None:
                        ok[i] = len(tails[i]) == len(self.objects) + 1 and tails[i][-1] == key
        cols: list[np.ndarray] = [None] * len(self.kinds)  # type: ignore[list-item]
        keep = np.flatnonzero(ok) if not ok.all() else None
        if self.numeric:
            if n == 1 and keep is None:
                values = self._struct.unpack_from(raws[0])  # one row: cheaper than a numpy record
                for j, v in zip(self.numeric, values, strict=True):
                    cols[j] = np.array([v], dtype=self.kinds[j])
            else:
                rec = np.frombuffer(b"".join([r[:w] for r in raws]), self.dtype, count=n)
                if keep is not None:
                    rec = rec[keep]
                for j in self.numeric:
                    cols[j] = rec[f"f{j}"]
        for pos, j in enumerate(self.objects):
            assert tails is not None
            col = np.empty(n if keep is None else len(keep), dtype=object)
            col[:] = [t[pos] for t in tails] if keep is None else [tails[i][pos] for i in keep.tolist()]
            cols[j] = col
        return ok, cols

    def decode_rows(self, raws: Sequence[bytes | None], hashed_keys: Sequence[Any]) -> list[list | None]:
        """Rows as lists of Python values in layout order (``None``: no row, or another key's digest)."""
        out: list[list | None] = [None] * len(raws)
        present = [i for i, r in enumerate(raws) if r is not None]
        if not present:
            return out
        any_hashed = any(hashed_keys[i] is not None for i in present)
        ok, cols = self.decode([raws[i] for i in present], [hashed_keys[i] for i in present] if any_hashed else None)
        lists = [c.tolist() for c in cols]
        for k, i in enumerate(np.asarray(present)[ok].tolist()):
            out[i] = [c[k] for c in lists]
        return out


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
        short = (_MAX_KEY - len(prefix) - 1) // 4  # a str key of at most this many characters has no digest
        if all(type(k) is str and len(k) <= short for k in keys):  # the common case without a call per key
            plain = prefix + b"s"
            return [(plain + k.encode("utf-8", "surrogatepass"), False) for k in keys]
        return [_db_key(prefix, k) for k in keys]

    def write(self, groups: Iterable[tuple], meta: dict[str, Any], *, replace: bool = False) -> int:
        """Write rows and the meta entry in one transaction; returns the number of rows written.

        Args:
            groups: ``(stream, entity, layout, keys, columns)`` or ``(..., columns, encoded)``:
                ``columns[j][i]`` is the value of feature ``layout[j]`` for ``keys[i]`` (a numpy array per
                feature, or any sequence: non-numeric columns are stored with msgpack); ``encoded`` is
                ``(db_keys, hashed)`` when the caller has it: the LMDB key of each row (:meth:`encode_keys`)
                and the positions of the keys stored under a digest (only those positions of ``keys`` are
                read then). A group whose layout or codec differs from the stored one must carry every key
                of the group (it is rewritten; old rows are dropped).
            meta: watermark, catalog version and offset; the layouts and codecs are added here.
            replace: drop every row first (in the same transaction: readers never see an empty table).
        """
        n = 0
        with self._env.begin(write=True) as txn:
            if replace:
                txn.drop(self._env.open_db(), delete=False)
            old = _load_meta(txn)
            layouts = dict(old.get("layouts", {})) if old else {}
            codecs = dict(old.get("codecs", {})) if old else {}
            for stream, entity, layout, keys, columns, *known in groups:
                prefix = row_prefix(stream, entity)
                name = f"{stream}\x1f{entity}"
                codec = RowCodec.of(columns)
                if layouts.get(name) != list(layout) or codecs.get(name) != codec.kinds:
                    _drop_prefix(txn, prefix)
                    layouts[name], codecs[name] = list(layout), codec.kinds
                if not layout:
                    continue  # no features: no rows
                if known:
                    db_keys, hashed = known[0]
                else:
                    encoded = [_db_key(prefix, k) for k in keys]
                    db_keys = [k for k, _ in encoded]
                    hashed = [i for i, (_, h) in enumerate(encoded) if h]
                rows = codec.encode(columns, len(db_keys), hashed, keys)
                with txn.cursor() as cur:
                    cur.putmulti(zip(db_keys, rows, strict=True))
                n += len(rows)
            txn.put(_META, msgpack.packb(dict(meta, layouts=layouts, codecs=codecs, format=FORMAT),
                                         use_bin_type=True))
        return n

    def read(self, requests: Sequence[tuple[str, str, Sequence[Any]]]) -> tuple[dict[str, Any], list[list]]:
        """As :meth:`OnlineReader.read`, in the writer's process (LMDB opens an environment once per process)."""
        return _read(self._env, requests)

    def read_raw(self, requests: Sequence[tuple[str, str, Sequence[Any]]], *,
                 raw_meta: bool = False) -> tuple[Any, list[tuple]]:
        """As :meth:`OnlineReader.read_raw`, in the writer's process."""
        return _read_raw(self._env, requests, raw_meta)

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

    def read_raw(self, requests: Sequence[tuple[str, str, Sequence[Any]]], *,
                 raw_meta: bool = False) -> tuple[Any, list[tuple]]:
        """The encoded rows of several ``(stream, entity, keys)`` groups from one snapshot, for
        :func:`rows_to_values`: ``(meta, [(raws, hashed_keys) per group])``, ``raws[i]`` the row of key ``i``
        (``None``: no row), ``hashed_keys[i]`` the key if its row is stored under a digest (``None`` when no
        key of the group is). ``raw_meta``: ``meta`` as stored (bytes or ``None``; see :func:`meta_of`)."""
        return _read_raw(self._env, requests, raw_meta)

    def close(self) -> None:
        self._env.close()


_META_CACHE: dict[bytes, dict[str, Any]] = {}  # raw meta entry -> decoded (it changes once per batch)


def meta_of(raw: bytes | None) -> dict[str, Any]:
    """The meta entry from its stored bytes (decoded once per batch written, then cached)."""
    if raw is None:
        return {}
    meta = _META_CACHE.get(raw)
    if meta is None:
        if len(_META_CACHE) > 64:
            _META_CACHE.clear()
        meta = _META_CACHE[raw] = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    return meta


def _read_raw(env, requests, raw_meta: bool = False) -> tuple[Any, list[tuple]]:
    out = []
    with env.begin() as txn:
        meta = txn.get(_META) if raw_meta else meta_of(txn.get(_META))
        get = txn.get
        for stream, entity, keys in requests:
            prefix = row_prefix(stream, entity)
            short = (_MAX_KEY - len(prefix) - 1) // 4  # a str key of at most this many characters has no digest
            if all(type(k) is str and len(k) <= short for k in keys):  # the common case, without a call per key
                plain = prefix + b"s"
                out.append((list(map(get, [plain + k.encode("utf-8", "surrogatepass") for k in keys])), None))
                continue
            raws, hashed = [], None
            for key in keys:
                if isinstance(key, str) and len(key) <= short:
                    raws.append(get(prefix + b"s" + key.encode("utf-8", "surrogatepass")))
                    continue
                db_key, h = _db_key(prefix, key)
                raws.append(get(db_key))
                if h:
                    hashed = hashed or [None] * len(keys)
                    hashed[len(raws) - 1] = key
            out.append((raws, hashed))
    return meta, out


def _read(env, requests) -> tuple[dict[str, Any], list[list]]:
    meta, raw = _read_raw(env, requests)
    out = []
    for (stream, entity, keys), (raws, hashed) in zip(requests, raw, strict=True):
        codec = _codec(meta, f"{stream}\x1f{entity}")
        if codec is None:
            out.append([None] * len(keys))
            continue
        out.append(codec.decode_rows(raws, hashed or [None] * len(keys)))
    return meta, out


_CODECS: dict[tuple, RowCodec] = {}


def _codec(meta: dict, name: str) -> RowCodec | None:
    kinds = meta.get("codecs", {}).get(name)
    if kinds is None:
        return None
    codec = _CODECS.get(tuple(kinds))
    if codec is None:
        codec = _CODECS[tuple(kinds)] = RowCodec(kinds)
    return codec


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


def rows_to_values(meta: dict, streams: dict[str, list[str]], entity: str, rows: list[tuple]) -> dict | None:
    """Turn encoded table rows (:meth:`OnlineReader.read_raw`) into ``{"cv": version, "values": {feature key:
    (present, values)}}``: ``present`` a mask over the keys asked for (False: a key the shard never saw, which
    gets the empty value), ``values`` an array of the values of the present keys. ``None`` if a feature is
    not in its group's layout, or the table's shard has stopped (meta ``"closed"``): the caller asks the
    shard."""
    if meta.get("closed"):
        return None
    layouts = meta.get("layouts", {})
    values: dict[str, Any] = {}
    for (stream, names), (raws, hashed) in zip(streams.items(), rows, strict=True):
        name = f"{stream}\x1f{entity}"
        layout = layouts.get(name)
        codec = _codec(meta, name)
        if layout is None or codec is None:
            return None
        index = {k: j for j, k in enumerate(layout)}
        if any(n not in index for n in names):
            return None
        if len(raws) == 1:  # one key: no masks to build
            present = np.array([raws[0] is not None])
            found = raws if raws[0] is not None else []
        else:
            present = np.fromiter((r is not None for r in raws), bool, len(raws))
            found = [r for r in raws if r is not None]
        if found:
            ok, cols = codec.decode(found, None if hashed is None else [h for h, r in zip(hashed, raws, strict=True)
                                                                        if r is not None])
            if not ok.all():
                present[np.flatnonzero(present)[~ok]] = False
        for n in names:
            j = index[n]
            values[n] = (present, cols[j] if found else np.zeros(0))
    return {"cv": meta.get("cv", 0), "values": values}
