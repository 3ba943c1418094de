"""LMDB snapshots of a shard's state, with the log offset they cover.

Invariants:

* A snapshot is written in one LMDB write transaction (all or nothing) and synced before it returns.
* ``meta["offset"]`` is the first log offset *not* included: state = snapshot ⊕ fold(log[offset:]).
* Every value is stored as ``crc32 (4 bytes, little endian) | msgpack payload``; a missing, unreadable or
  checksum-failing snapshot loads as ``None`` (with a warning) and the shard rebuilds from the log alone.
"""

from __future__ import annotations

import os
import shutil
import struct
import warnings
import zlib
from typing import Any

import lmdb
import msgpack

__all__ = ["FORMAT", "SnapshotStore"]

FORMAT = 1
_MAP_SIZE = 1 << 40  # address space only; the file grows with use


def _pack(obj: Any) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return struct.pack("<I", zlib.crc32(payload)) + payload


def _unpack(raw: bytes) -> Any:
    (crc,) = struct.unpack_from("<I", raw)
    payload = memoryview(raw)[4:]
    if zlib.crc32(payload) != crc:
        raise ValueError("checksum mismatch")
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


class SnapshotStore:
    """One LMDB environment holding the latest snapshot of one shard."""

    @classmethod
    def open_or_discard(cls, path: str) -> SnapshotStore:
        """Open the environment at ``path``; one LMDB cannot open is deleted (the log rebuilds the state)."""
        try:
            return cls(path)
        except lmdb.Error as exc:
            warnings.warn(f"snapshot {path}: cannot open ({exc}); discarding it, the log rebuilds the state",
                          RuntimeWarning, stacklevel=2)
            shutil.rmtree(path, ignore_errors=True)
            return cls(path)

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        self._env = lmdb.open(self.path, map_size=_MAP_SIZE, subdir=True, sync=True, metasync=True)

    def load(self) -> dict[str, Any] | None:
        """All entries of the snapshot, or ``None`` if there is none or it is damaged."""
        try:
            with self._env.begin() as txn:
                raw_meta = txn.get(b"meta")
                if raw_meta is None:
                    return None
                meta = _unpack(raw_meta)
                if meta.get("format") != FORMAT:
                    raise ValueError(f"unknown format {meta.get('format')!r}")
                out = {"meta": meta}
                for key in meta["keys"]:
                    raw = txn.get(key.encode())
                    if raw is None:
                        raise ValueError(f"entry {key!r} missing")
                    out[key] = _unpack(raw)
                return out
        except (ValueError, struct.error, msgpack.UnpackException, lmdb.Error, KeyError, TypeError) as exc:
            warnings.warn(f"snapshot {self.path}: unusable ({exc}); rebuilding state from the log",
                          RuntimeWarning, stacklevel=2)
            return None

    def save(self, meta: dict[str, Any], entries: dict[str, Any]) -> int:
        """Replace the snapshot atomically; returns the bytes written."""
        meta = dict(meta, format=FORMAT, keys=sorted(entries))
        written = 0
        with self._env.begin(write=True) as txn:
            txn.drop(self._env.open_db(), delete=False)
            for key, obj in entries.items():
                raw = _pack(obj)
                written += len(raw)
                txn.put(key.encode(), raw)
            txn.put(b"meta", _pack(meta))
        self._env.sync(True)
        return written

    def close(self) -> None:
        self._env.close()
