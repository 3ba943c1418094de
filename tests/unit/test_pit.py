"""The replay kernel's building blocks (rayfs.engine.pit): stable sorting, time ranks, lazy column views."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rayfs.engine.columns import concat, take
from rayfs.engine.pit import ColumnView, stable_argsort, time_ranks

int64s = st.integers(min_value=-(2**62), max_value=2**62)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-3, max_value=3), max_size=60), st.sampled_from([1, 2**40, 2**60]))
def test_stable_argsort_equals_numpy_stable(small, scale):
    keys = np.array(small, dtype=np.int64) * np.int64(scale)  # ties, and ranges too wide to pack
    assert stable_argsort(keys).tolist() == np.argsort(keys, kind="stable").tolist()


@settings(max_examples=100, deadline=None)
@given(st.lists(int64s, max_size=40))
def test_stable_argsort_of_wide_keys(values):
    keys = np.array(values + values[:5], dtype=np.int64)
    assert stable_argsort(keys).tolist() == np.argsort(keys, kind="stable").tolist()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=50))
def test_time_ranks(values):
    ts = np.array(values, dtype=np.int64)
    times, rank = time_ranks(ts)
    assert times.tolist() == sorted(set(values))
    assert times[rank].tolist() == values


def test_column_view_equals_concat_then_take():
    rng = np.random.default_rng(3)
    batches = [{"__ts": np.arange(3), "x": rng.random(3), "s": np.array(["a", None, "b"], dtype=object)},
               {"__ts": np.arange(2), "x": rng.random(2)},
               {},
               {"__ts": np.arange(4), "s": np.array(["c", "d", None, "e"], dtype=object), "k": np.arange(4)}]
    order = rng.permutation(9)
    whole = take(concat([b for b in batches if b]), order)
    view = ColumnView(batches, order)
    assert sorted(view) == sorted(whole) and len(view) == len(whole)
    for name in whole:
        a, b = view[name], whole[name]
        assert a.dtype == b.dtype, name
        assert [None if v is None or v != v else v for v in a.tolist()] == \
            [None if v is None or v != v else v for v in b.tolist()], name
    assert "missing" not in view
