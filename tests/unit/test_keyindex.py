"""KeyIndex: the slot of every key is the same whichever look-up path answers (few keys through the dict,
many through pandas' hash tables, dictionary-encoded columns without decoding), and new keys get slots in
order of first appearance."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from rayfs.engine.columns import encode, key_column
from rayfs.engine.keyindex import SMALL_LOOKUP, KeyIndex

KEYS = st.one_of(st.integers(-3, 3), st.sampled_from(["0", "1", "a", "b", ""]), st.none())


def column(keys: list) -> np.ndarray:
    return key_column(pd.Series(keys, dtype=object), what="k")


def reference(known: list, probe: list) -> list[int]:
    slot = {}
    for k in known:
        if k is not None:
            slot.setdefault((type(k), k), len(slot))
    return [slot.get((type(k), k), -1) if k is not None else -1 for k in probe]


@settings(max_examples=200, deadline=None)
@given(st.lists(KEYS, max_size=40), st.lists(KEYS, min_size=1, max_size=40))
def test_reads_of_few_and_many_keys_agree_with_a_plain_dict(known, probe):
    ki = KeyIndex()
    if known:
        ki.lookup(column(known), add=True)
    want = reference(known, probe)
    few = ki.lookup(column(probe), add=False).tolist()
    # The same keys padded past SMALL_LOOKUP with a key never added take the vectorised path.
    many = ki.lookup(column(probe + ["never"] * SMALL_LOOKUP), add=False).tolist()[:len(probe)]
    assert few == many == want
    assert len(ki) == len({(type(k), k) for k in known if k is not None})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 5), min_size=1, max_size=80))
def test_int64_key_columns_few_and_many(keys):
    ki = KeyIndex()
    col = np.array(keys, dtype=np.int64)
    slots = ki.lookup(col, add=True).tolist()
    assert slots == reference(keys, keys)
    assert ki.lookup(col[:3], add=False).tolist() == slots[:3]  # the dict path, numpy ints in
    assert ki.lookup(col, add=False).tolist() == slots


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=80),
       st.lists(st.sampled_from(["b", "z"]), max_size=5))
def test_encoded_columns_match_decoded_ones(keys, known):
    plain, coded = KeyIndex(), KeyIndex()
    if known:
        plain.lookup(column(known), add=True)
        coded.lookup(column(known), add=True)
    wire = encode(np.array(keys, dtype=object))
    got = coded.lookup_encoded(wire["u"], np.frombuffer(wire["c"], dtype=np.int32), add=True)
    assert got.tolist() == plain.lookup(column(keys), add=True).tolist()
    assert coded.keys() == plain.keys()


def test_a_filter_adds_only_the_keys_it_selects():
    ki = KeyIndex()
    slots = ki.lookup(column(["x", "y", 1, "x"]), add=lambda arr: np.array([k != "y" for k in arr]))
    assert slots.tolist() == [0, -1, 1, 0]
    assert ki.keys() == ["x", 1]
    assert ki.lookup(column(["1", 1, None]), add=False).tolist() == [-1, 1, -1]
