"""Range queries (the training-set kernel) keep entities apart: a value depends only on its entity's events.

The moment aggregates answer ranges from prefix sums; these tests pin that one entity's huge values
(overflow to inf, or magnitudes that swamp float64 precision) never reach another entity's results, and
that every range aggregate gives an entity exactly what it gives that entity's events alone.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayfs.aggregates import REGISTRY

MOMENTS = ("sum", "mean", "variance", "stddev")
NUMERIC = ("count", "sum", "mean", "min", "max", "variance", "stddev", "first", "last", "count_distinct")


def online(name: str, values: list[float]) -> float:
    """The online fold's value of ``values`` (one slot, one batch)."""
    agg = REGISTRY[name]("num")
    state = agg.zero(1)
    n = len(values)
    agg.update(state, np.zeros(n, dtype=np.int64), np.array(values, dtype=np.float64),
               np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64))
    return float(agg.finalize(state)[0])


def ranges_of(entities: list[list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The values of all entities (sorted by entity), their groups, and each entity's full range."""
    values = np.array([v for vs in entities for v in vs], dtype=np.float64)
    groups = np.repeat(np.arange(len(entities)), [len(vs) for vs in entities])
    return values, groups, np.cumsum([0] + [len(vs) for vs in entities])


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit, NaN equal to NaN."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


@pytest.mark.parametrize("huge", [[1e308, 1e308], [1e160, -1e160], [1e300, -1e300, 1e300], [np.inf, 1.0]])
@pytest.mark.parametrize("name", MOMENTS)
def test_one_entitys_huge_values_do_not_reach_another(name, huge):
    b = [1.0, 2.0, 4.0]
    values, groups, bounds = ranges_of([huge, b])
    agg = REGISTRY[name]("num")
    lo = np.array([0, bounds[1], bounds[1], bounds[1] + 1])
    hi = np.array([bounds[1], bounds[2], bounds[1] + 2, bounds[2]])
    got = agg.range_query(values, None, None, lo, hi, groups=groups)
    alone = agg.range_query(np.array(b), None, None, lo[1:] - bounds[1], hi[1:] - bounds[1],
                            groups=np.zeros(len(b), dtype=np.int64))
    assert same(got[1:], alone)
    assert np.isclose(got[1], online(name, b), rtol=1e-15)
    # The huge entity gets what it gets alone, and what the online fold gives it (equal huge values have
    # variance 0 in both; a sum that overflows is inf in both).
    assert same(got[:1], agg.range_query(np.array(huge), None, None, [0], [len(huge)],
                                         groups=np.zeros(len(huge), dtype=np.int64)))
    assert same(got[:1], [online(name, huge)])
    # Without groups the ranges alone delimit the entities: the same answers.
    assert same(agg.range_query(values, None, None, lo, hi), got)


@pytest.mark.parametrize("name", ("variance", "stddev"))
def test_huge_first_entity_leaves_the_variance_of_the_next_exact(name):
    values, groups, bounds = ranges_of([[1e160, -1e160], [3.0, 5.0]])
    got = REGISTRY[name]("num").range_query(values, None, None, [2], [4], groups=groups)
    assert got[0] == (2.0 if name == "variance" else np.sqrt(2.0))


extreme = st.one_of(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 1e160, -1e160, 1.5e300, 5e-324, np.inf, -np.inf]),
    st.floats(allow_nan=False, allow_infinity=False),
)


@st.composite
def entities_and_ranges(draw):
    entities = draw(st.lists(st.lists(extreme, min_size=1, max_size=12), min_size=1, max_size=6))
    ranges = []
    for e, vs in enumerate(entities):
        for _ in range(draw(st.integers(0, 5))):
            a = draw(st.integers(0, len(vs)))
            b = draw(st.integers(0, len(vs)))
            ranges.append((e, min(a, b), max(a, b)))
    return entities, ranges


@settings(max_examples=300, deadline=None, derandomize=True)
@given(entities_and_ranges(), st.booleans())
def test_range_query_per_entity_equals_that_entity_alone(data, with_groups):
    entities, ranges = data
    values, groups, bounds = ranges_of(entities)
    n = len(values)
    ts = np.arange(n, dtype=np.int64)
    e = np.array([r[0] for r in ranges], dtype=np.int64)
    lo = np.array([bounds[r[0]] + r[1] for r in ranges], dtype=np.int64)
    hi = np.array([bounds[r[0]] + r[2] for r in ranges], dtype=np.int64)
    for name in NUMERIC:
        agg = REGISTRY[name]("num")
        got = agg.range_query(values, ts, ts, lo, hi, groups=groups if with_groups else None)
        for i, vs in enumerate(entities):
            mine = e == i
            own = np.arange(len(vs), dtype=np.int64)
            alone = agg.range_query(np.array(vs, dtype=np.float64), own, own, lo[mine] - bounds[i],
                                    hi[mine] - bounds[i], groups=np.zeros(len(vs), dtype=np.int64)
                                    if with_groups else None)
            assert same(got[mine], alone), (name, i, vs, got[mine], alone)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=10),
                min_size=1, max_size=5))
def test_full_ranges_match_the_online_fold(entities):
    values, groups, bounds = ranges_of(entities)
    for name in MOMENTS:
        got = REGISTRY[name]("num").range_query(values, None, None, bounds[:-1], bounds[1:], groups=groups)
        want = [online(name, vs) for vs in entities]
        assert np.allclose(got, want, rtol=1e-9, atol=1e-9, equal_nan=True), name
