"""Stable hashing of entity keys to shards (vectorised, independent of Python's salted ``hash()``).

Integer keys are mixed with the SplitMix64 finalizer; string keys with an 8-byte BLAKE2b digest of their
UTF-8 bytes. The integer 1 and the string "1" are different keys and hash differently. A shard owns a
contiguous range of the 64-bit hash space: ``shard = (hash >> 32) * n_shards >> 32``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def hash_ints(keys: np.ndarray) -> np.ndarray:
    """SplitMix64 of int64 keys as uint64.

    >>> int(hash_ints(np.array([1], dtype=np.int64))[0]) == int(hash_ints(np.array([1]))[0])
    True
    """
    z = keys.astype(np.int64, copy=False).view(np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _hash_str(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


def hash_keys(keys: np.ndarray) -> np.ndarray:
    """uint64 hash of each key; null keys (None) hash to 0 (callers mask them out)."""
    if keys.dtype != object:
        return hash_ints(keys)
    codes, uniques = pd.factorize(pd.Series(keys, dtype=object), use_na_sentinel=True)
    uh = np.empty(len(uniques) + 1, dtype=np.uint64)
    uh[-1] = 0
    for i, u in enumerate(uniques.tolist()):
        uh[i] = _hash_str(u) if isinstance(u, str) else int(hash_ints(np.array([u], dtype=np.int64))[0])
    return uh[codes]


def shard_of(keys: np.ndarray, n_shards: int) -> np.ndarray:
    """The owning shard of each key (int64); -1 for null keys.

    >>> shard_of(np.array(["u1", None, 7], dtype=object), 4).tolist()[1]
    -1
    """
    h = hash_keys(keys)
    shard = ((h >> np.uint64(32)) * np.uint64(n_shards)) >> np.uint64(32)
    out = shard.astype(np.int64)
    if keys.dtype == object:
        out[np.fromiter((k is None for k in keys), dtype=bool, count=len(keys))] = -1
    return out
