"""Feature statistics (rayfs.engine.featurestats) without Ray: partials merge exactly like the whole input.

Shards compute :func:`partial_stats` of their own entities' values and the driver merges them, so the
merge of any split of the input must equal the statistics of the whole input (Hypothesis). Also pinned
against pandas: counts, nulls (None, NaN, empty lists), mean/min/max of numbers only, and the
HyperLogLog distinct estimate within its error bound.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayfs.engine.featurestats import FIELDS, LG_K, frame_stats, merge_stats, partial_stats

HLL_RSE = 1.04 / math.sqrt(2**LG_K)  # ~1.6%


def whole(values) -> dict:
    return merge_stats([partial_stats(values)])


def split(values: np.ndarray, cuts: list[int]) -> dict:
    bounds = [0, *sorted(min(c, len(values)) for c in cuts), len(values)]
    return merge_stats([partial_stats(values[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)])


def obj(values) -> np.ndarray:
    a = np.empty(len(values), dtype=object)
    a[:] = values
    return a


def assert_same_stats(got: dict, want: dict) -> None:
    assert set(got) == set(FIELDS)
    for k in ("count", "nulls"):
        assert got[k] == want[k], k
    for k in ("null_rate", "min", "max"):
        assert got[k] == want[k] or (got[k] is not None and want[k] is not None and math.isnan(got[k])
                                     and math.isnan(want[k])), (k, got[k], want[k])
    if want["mean"] is None:
        assert got["mean"] is None
    else:
        assert got["mean"] == pytest.approx(want["mean"], rel=1e-9, abs=1e-9)
    # Small inputs: the sketches are exact (list/set mode), up to the estimator's rounding.
    assert got["distinct"] == pytest.approx(want["distinct"], rel=1e-6, abs=1e-6)


# ------------------------------------------------------------------------------------------ strategies
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
cuts = st.lists(st.integers(min_value=0, max_value=120), max_size=5)


@st.composite
def float_arrays(draw):
    vals = draw(st.lists(st.one_of(finite, st.just(math.nan), st.sampled_from([0.0, 1.0, 2.5])), max_size=120))
    return np.array(vals, dtype=np.float64)


@st.composite
def object_arrays(draw):
    """Object arrays as shards produce them: strings, ints, lists (last_k & co) with None/NaN/[] as nulls."""
    kind = draw(st.sampled_from(["str", "int", "list", "mixed"]))
    null = st.sampled_from([None, math.nan]) if kind != "list" else st.sampled_from([None, []])
    value = {
        "str": st.text(alphabet="abcé", min_size=0, max_size=3),
        "int": st.integers(min_value=-50, max_value=50),
        "list": st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=3),
        "mixed": st.one_of(st.integers(min_value=0, max_value=5), st.text(alphabet="xy", max_size=2)),
    }[kind]
    return obj(draw(st.lists(st.one_of(value, null), max_size=120)))


# ------------------------------------------------------------------------------------------ properties
@settings(max_examples=200, deadline=None, derandomize=True)
@given(float_arrays(), cuts)
def test_merge_of_split_floats_equals_whole(values, cut):
    assert_same_stats(split(values, cut), whole(values))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(object_arrays(), cuts)
def test_merge_of_split_objects_equals_whole(values, cut):
    assert_same_stats(split(values, cut), whole(values))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.one_of(finite, st.just(math.nan)), max_size=150))
def test_float_stats_match_pandas(vals):
    s = pd.Series(vals, dtype=np.float64)
    got = whole(s.to_numpy())
    present = s.dropna()
    assert got["count"] == len(s) and got["nulls"] == int(s.isna().sum())
    assert got["null_rate"] == (s.isna().mean() if len(s) else None)
    if len(present):
        assert got["mean"] == pytest.approx(present.mean(), rel=1e-9, abs=1e-9)
        assert (got["min"], got["max"]) == (present.min(), present.max())
    else:
        assert got["mean"] is got["min"] is got["max"] is None
    assert got["distinct"] == pytest.approx(present.nunique(), rel=1e-6, abs=1e-6)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=100), cuts)
def test_int64_arrays(vals, cut):
    a = np.array(vals, dtype=np.int64)
    got = whole(a)
    assert got["nulls"] == 0 and got["count"] == len(a)
    if len(a):
        assert (got["min"], got["max"]) == (float(a.min()), float(a.max()))
        assert got["mean"] == pytest.approx(a.mean(), rel=1e-9)
    assert got["distinct"] == pytest.approx(len(set(vals)), rel=1e-6, abs=1e-6)
    assert_same_stats(split(a, cut), got)
    # Counts come from shards as int64, from a training set as objects too: same statistics.
    assert_same_stats(whole(obj(vals)), got)


# ------------------------------------------------------------------------------------------ pinned cases
def test_nulls_none_nan_and_empty_lists():
    got = whole(obj([None, math.nan, np.float64("nan"), [], [1, 2], [1, 2], [3]]))
    assert (got["count"], got["nulls"]) == (7, 4)
    assert got["null_rate"] == pytest.approx(4 / 7)
    assert got["mean"] is got["min"] is got["max"] is None  # lists are not numbers
    assert got["distinct"] == pytest.approx(2, rel=1e-6, abs=1e-6)  # [1, 2] and [3]


def test_top_k_style_lists_of_dicts():
    v = [[{"value": "a", "count": 2}], [{"value": "a", "count": 2}], [{"value": "b", "count": 1}], []]
    got = whole(obj(v))
    assert (got["count"], got["nulls"]) == (4, 1)
    assert got["distinct"] == pytest.approx(2, rel=1e-6, abs=1e-6)


def test_strings_have_no_mean_min_max_but_a_distinct_count():
    got = whole(obj(["b", "a", None, "a", "é", math.nan]))
    assert (got["count"], got["nulls"], got["null_rate"]) == (6, 2, pytest.approx(1 / 3))
    assert got["mean"] is got["min"] is got["max"] is None
    assert got["distinct"] == pytest.approx(3, rel=1e-6, abs=1e-6)


def test_numbers_and_strings_mixed_across_parts_are_not_numeric():
    parts = [partial_stats(np.array([1.0, 2.0])), partial_stats(obj(["x", None]))]
    got = merge_stats(parts)
    assert (got["count"], got["nulls"]) == (4, 1)
    assert got["mean"] is None and got["min"] is None and got["max"] is None
    assert got["distinct"] == pytest.approx(3, rel=1e-6, abs=1e-6)


def test_all_null_parts_are_neutral():
    a = partial_stats(np.array([np.nan, np.nan]))
    b = partial_stats(obj([None]))
    c = partial_stats(np.array([4.0, 6.0]))
    got = merge_stats([a, b, c])
    assert (got["count"], got["nulls"], got["mean"], got["min"], got["max"]) == (5, 3, 5.0, 4.0, 6.0)
    only_nulls = merge_stats([a, b])
    assert (only_nulls["count"], only_nulls["nulls"], only_nulls["null_rate"]) == (3, 3, 1.0)
    assert only_nulls["mean"] is None and only_nulls["distinct"] == 0


def test_empty_input_and_no_parts():
    for got in (whole(np.array([], dtype=np.float64)), whole(obj([])), merge_stats([])):
        assert (got["count"], got["nulls"], got["null_rate"], got["mean"], got["min"], got["max"]) == \
            (0, 0, None, None, None, None)
        assert got["distinct"] == 0


def test_int_and_float_of_one_value_count_once_and_bools_are_not_numbers():
    got = whole(obj([1, 1.0, np.int64(1), 2]))
    assert got["distinct"] == pytest.approx(2, rel=1e-6, abs=1e-6) and got["mean"] == 1.25
    b = whole(obj([True, False, True, None]))
    assert b["mean"] is None and b["nulls"] == 1 and b["distinct"] == pytest.approx(2, rel=1e-6, abs=1e-6)


def test_partials_are_msgpack_able():
    import msgpack

    for v in (np.array([1.0, np.nan]), obj(["a", None]), obj([[1], []])):
        p = partial_stats(v)
        assert msgpack.unpackb(msgpack.packb(p, use_bin_type=True), raw=False) == p


def test_distinct_estimate_within_hll_error_across_overlapping_parts():
    rng = np.random.default_rng(5)
    n_distinct = 40_000
    vals = rng.permutation(np.concatenate([np.arange(n_distinct), rng.integers(0, n_distinct, 20_000)]))
    parts = np.array_split(vals.astype(np.float64), 4)  # values repeat across parts (chunks of a training set)
    got = merge_stats([partial_stats(p) for p in parts])
    assert abs(got["distinct"] - n_distinct) <= 3 * HLL_RSE * n_distinct
    strs = obj([f"k{v}" for v in vals])
    got_s = merge_stats([partial_stats(p) for p in np.array_split(strs, 3)])
    assert abs(got_s["distinct"] - n_distinct) <= 3 * HLL_RSE * n_distinct
    assert got["count"] == got_s["count"] == len(vals)


# ------------------------------------------------------------------------------------------ frame_stats
def test_frame_stats_matches_pandas():
    rng = np.random.default_rng(11)
    n = 500
    x = rng.normal(size=n)
    x[rng.random(n) < 0.2] = np.nan
    df = pd.DataFrame({
        "user": obj([f"u{i % 7}" for i in range(n)]),
        "n": rng.integers(0, 30, n),
        "x": x,
        "s": obj([None if i % 5 == 0 else f"s{i % 13}" for i in range(n)]),
        "k": obj([[] if i % 4 == 0 else [int(i % 3)] for i in range(n)]),
    })
    got = frame_stats(df, ["x", "n", "s", "k"])
    assert list(got.columns) == ["feature", *FIELDS]
    assert got["feature"].tolist() == ["x", "n", "s", "k"]
    r = got.set_index("feature")
    assert r.loc["x", "nulls"] == df["x"].isna().sum()
    assert r.loc["x", "mean"] == pytest.approx(df["x"].mean())
    assert (r.loc["x", "min"], r.loc["x", "max"]) == (df["x"].min(), df["x"].max())
    assert r.loc["x", "distinct"] == pytest.approx(df["x"].nunique(), rel=3 * HLL_RSE)
    assert (r.loc["n", "nulls"], r.loc["n", "min"], r.loc["n", "max"]) == (0, df["n"].min(), df["n"].max())
    assert r.loc["n", "distinct"] == pytest.approx(df["n"].nunique(), rel=1e-6, abs=1e-6)
    assert r.loc["s", "nulls"] == 100 and r.loc["s", "distinct"] == pytest.approx(13, rel=1e-6, abs=1e-6)
    assert pd.isna(r.loc["s", "mean"])
    assert r.loc["k", "nulls"] == 125 and r.loc["k", "distinct"] == pytest.approx(3, rel=1e-6, abs=1e-6)
    assert (r["count"] == n).all()
    assert r.loc["x", "null_rate"] == pytest.approx(df["x"].isna().mean())
    everything = frame_stats(df)
    assert everything["feature"].tolist() == list(df.columns)


def test_frame_stats_of_an_empty_frame():
    got = frame_stats(pd.DataFrame({"x": pd.Series([], dtype=np.float64)}))
    assert got["count"].tolist() == [0] and got["nulls"].tolist() == [0]


def test_frame_stats_counts_pd_na_as_null():
    df = pd.DataFrame({"s": pd.Series(["a", None, "b", None], dtype="string")})
    got = frame_stats(df).set_index("feature")
    assert got.loc["s", "nulls"] == 2
    assert got.loc["s", "distinct"] == pytest.approx(2, rel=1e-6, abs=1e-6)


def test_distinct_of_mixed_parts_counts_a_value_once():
    whole_ = whole(obj([1, 1, "a"]))
    parts = merge_stats([partial_stats(obj([1])), partial_stats(obj([1, "a"]))])
    assert whole_["distinct"] == pytest.approx(2, rel=1e-6)
    assert parts["distinct"] == pytest.approx(2, rel=1e-6)


def test_empty_string_is_a_distinct_value():
    got = whole(obj(["", "a", None]))
    assert (got["count"], got["nulls"]) == (3, 1)
    assert got["distinct"] == pytest.approx(2, rel=1e-6)
