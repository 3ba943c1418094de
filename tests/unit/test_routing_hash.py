"""String keys hash (and so route) exactly as pandas' hash_array does, whichever path computes it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rayfs.engine import routing


def _strings(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    alphabet = list("abcxyz019 -_") + ["é", "ключ", "字", "🙂"]
    out = np.empty(n, dtype=object)
    out[:] = ["".join(rng.choice(alphabet, rng.integers(0, 12))) for _ in range(n)]
    return out


def test_string_hashes_equal_pandas_hash_array():
    keys = _strings(2000, 3)
    want = pd.util.hash_array(keys, encoding="utf8", hash_key=routing._SIP_KEY, categorize=False)
    assert routing.hash_keys(keys).tolist() == want.tolist()


def test_few_string_keys_route_like_many():
    keys = _strings(300, 4)
    mixed = np.concatenate([keys, np.array([None, 7], dtype=object)])
    many = routing.shard_of(mixed, 5)[:300]  # nulls and ints: the general path
    few = np.concatenate([routing.shard_of(keys[i:i + 3], 5) for i in range(0, 300, 3)])  # the few-strings path
    assert few.tolist() == many.tolist()
