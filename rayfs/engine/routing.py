"""Stable hashing of entity keys to shards (vectorised, independent of Python's salted ``hash()``).

Integer keys are mixed with the SplitMix64 finalizer; string keys with SipHash-2-4 (pandas' C
implementation, fixed key) of their UTF-8 bytes. The integer 1 and the string "1" are different keys
(they may land on the same shard; the shard's key index keeps them apart). A shard owns a
contiguous range of the 64-bit hash space: ``shard = (hash >> 32) * n_shards >> 32``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["fingerprint", "hash_ints", "hash_keys", "shard_of", "shard_of_hashes", "shard_of_strs"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SIP_KEY = "rayfs-routing-v1"  # 16 bytes

try:
    from pandas._libs.hashing import hash_object_array as _sip
except ImportError:  # a pandas without it: pd.util.hash_array gives the same hashes
    _sip = None


def hash_ints(keys: np.ndarray) -> np.ndarray:
    """SplitMix64 of int64 keys as uint64.

    >>> int(hash_ints(np.array([1], dtype=np.int64))[0]) == int(hash_ints(np.array([1]))[0])
    True
    """
    z = keys.astype(np.int64, copy=False).view(np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _hash_strs(keys: np.ndarray) -> np.ndarray:
    # pandas' SipHash-2-4 with a fixed key: C speed, and stable across runs and processes.
    if _sip is None:
        return pd.util.hash_array(keys, encoding="utf8", hash_key=_SIP_KEY, categorize=False)
    # What pd.util.hash_array does for an object array of strings, without its dispatch (which costs more
    # than hashing a few keys): SipHash of each key, then pandas' bit mixing.
    z = _sip(keys, _SIP_KEY, "utf8")
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def hash_keys(keys: np.ndarray) -> np.ndarray:
    """uint64 hash of each key; null keys (None) hash to 0 (callers mask them out)."""
    if keys.dtype != object:
        return hash_ints(keys)
    out = np.zeros(len(keys), dtype=np.uint64)
    ok = ~pd.isna(keys)
    vals = keys[ok]
    kind = pd.api.types.infer_dtype(vals, skipna=False)
    if kind == "string":
        out[ok] = _hash_strs(vals)
    elif kind == "integer":
        out[ok] = hash_ints(vals.astype(np.int64))
    elif len(vals):  # ints and strings mixed: hash each type its own way
        is_str = np.fromiter((isinstance(v, str) for v in vals), dtype=bool, count=len(vals))
        part = np.empty(len(vals), dtype=np.uint64)
        part[is_str] = _hash_strs(vals[is_str])
        part[~is_str] = hash_ints(vals[~is_str].astype(np.int64))
        out[ok] = part
    return out


def fingerprint() -> str:
    """Hashes of a few fixed keys: a store records it and refuses to open if routing ever changed.

    >>> len(fingerprint())
    16
    """
    h = hash_keys(np.array(["", "user-1", "ключ", 0, -1, 2**62], dtype=object))
    return f"{int(np.bitwise_xor.reduce(h * np.arange(1, 7, dtype=np.uint64))):016x}"


def shard_of_hashes(h: np.ndarray, n_shards: int) -> np.ndarray:
    """The owning shard (int64) of each key hash (see the module docstring)."""
    return (((h >> np.uint64(32)) * np.uint64(n_shards)) >> np.uint64(32)).astype(np.int64)


def shard_of_strs(keys: np.ndarray, n_shards: int) -> np.ndarray:
    """:func:`shard_of` for an object array of ``str`` only (no nulls, no ints): skips the type checks.

    >>> keys = np.array(["u1", "u2"], dtype=object)
    >>> shard_of_strs(keys, 4).tolist() == shard_of(keys, 4).tolist()
    True
    """
    return shard_of_hashes(_hash_strs(keys), n_shards)


def shard_of(keys: np.ndarray, n_shards: int) -> np.ndarray:
    """The owning shard of each key (int64); -1 for null keys.

    >>> shard_of(np.array(["u1", None, 7], dtype=object), 4).tolist()[1]
    -1
    """
    if keys.dtype == object and len(keys) <= 64 and all(type(k) is str for k in keys.tolist()):
        return shard_of_strs(keys, n_shards)  # a few string keys (an online read): no null or type checks
    out = shard_of_hashes(hash_keys(keys), n_shards)
    if keys.dtype == object:
        out[pd.isna(keys)] = -1
    return out
