"""Contract tests of rayfs.aggregates, parametrised over every REGISTRY entry and every kind it accepts."""

from __future__ import annotations

import ast
import math
import pathlib
import statistics
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayfs.aggregates import REGISTRY, Aggregate, make_aggregate
from rayfs.aggregates.base import KINDS, objects
from rayfs.aggregates.distinct import distinct_in_ranges, previous_occurrence
from rayfs.aggregates.sketches import KLL_K
from rayfs.errors import AggregateError

CASES = [(name, kind) for name, cls in sorted(REGISTRY.items()) for kind in sorted(cls.kinds)]
INVERTIBLE = [(name, kind) for name, kind in CASES if REGISTRY[name].invertible]
NOT_INVERTIBLE = [(name, kind) for name, kind in CASES if not REGISTRY[name].invertible]
REJECTED = [(name, kind) for name, cls in sorted(REGISTRY.items()) for kind in sorted(KINDS - cls.kinds)]


def _ids(cases):
    return [f"{name}-{kind}" for name, kind in cases]


PARAMS = {"last_k": {"k": 3}, "first_k": {"k": 3}, "top_k": {"k": 2}, "approx_quantile": {"q": 0.5}}
"""Parameters for the aggregates that need them (small k, so that k truncates the test inputs)."""
LISTS = ("last_k", "first_k", "top_k")
COUNTS = ("count", "count_distinct", "approx_count_distinct")


def make(name: str, kind: str) -> Aggregate:
    return make_aggregate(name, kind, **PARAMS.get(name, {}))


def as_results(values: list, dtype) -> np.ndarray:
    """A 1-d result array of ``dtype`` (lists stay elements of an object array)."""
    return objects(values) if np.dtype(dtype) == object else np.array(values, dtype=dtype)


SETTINGS = settings(max_examples=50, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REL = 1e-9
SEEDS = st.integers(0, 2**32 - 1)

ALPHABET = np.array(list("abé"), dtype=object)

@dataclass
class Events:
    """A batch of events over ``nslots`` slots; ``values`` is None for kind ``none``."""

    nslots: int
    slots: np.ndarray
    values: np.ndarray | None
    ts: np.ndarray
    seq: np.ndarray

    def __len__(self) -> int:
        return len(self.slots)

    def pick(self, idx) -> tuple:
        """The (slots, values, ts, seq) arguments of update for the events at ``idx``."""
        idx = np.asarray(idx, dtype=np.int64)
        return (self.slots[idx], None if self.values is None else self.values[idx], self.ts[idx],
                self.seq[idx])

    @property
    def scale(self) -> float:
        if self.values is None or self.values.dtype == object or not len(self):
            return 0.0
        return float(np.abs(self.values).max())


@st.composite
def events(draw, kind: str, small: bool = False, max_n: int = 40) -> Events:
    """Random events; Hypothesis picks the sizes and a seed, numpy draws the arrays (fast).

    Timestamps come from ``0..4`` (many ties, resolved by the unique ``seq``); numbers are small integers
    (ties) or multiples of 1/64 up to ~1.6e4 (exact sums); strings are 0-3 letters of ``"abé"``.
    """
    nslots = draw(st.integers(1, 5))
    n = draw(st.integers(0, max_n))
    rng = np.random.default_rng(draw(SEEDS))
    slots = rng.integers(0, nslots, n)
    ts = rng.integers(0, 5, n)
    seq = rng.permutation(n).astype(np.int64)
    if kind == "num":
        values = rng.integers(-3, 4, n).astype(np.float64)
        if not small:
            dyadic = rng.integers(-10**6, 10**6, n) / 64
            values = np.where(rng.random(n) < rng.random(), dyadic, values)
    elif kind == "str":
        values = np.empty(n, dtype=object)
        values[:] = ["".join(rng.choice(ALPHABET, rng.integers(0, 4))) for _ in range(n)]
    else:
        values = None
    return Events(nslots, slots, values, ts, seq)


def run(agg: Aggregate, ev: Events, idx=None, state=None) -> dict:
    """``state`` (default: zero) updated with the events at ``idx`` (default: all)."""
    if state is None:
        state = agg.zero(ev.nslots)
    if idx is None:
        idx = np.arange(len(ev))
    agg.update(state, *ev.pick(idx))
    return state


def assert_same(name: str, got: np.ndarray, want: np.ndarray, scale: float = 0.0, exact: bool = False):
    """Results equal: exactly for ints and strings, within REL (plus a data-scaled floor) for floats.

    The absolute floor only matters near zero, where a variance computed by merges or deletions carries
    rounding of order eps * max|x|**2; stddev is compared through its square for the same reason.
    """
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape
    if got.dtype != np.float64:
        assert got.tolist() == want.tolist()
        return
    assert np.array_equal(np.isnan(got), np.isnan(want)), (got, want)
    if exact:
        assert np.array_equal(got, want, equal_nan=True), (got, want)
        return
    if name == "stddev":
        got, want, name = got**2, want**2, "variance"
    floor = 1e-9 * (1 + scale) ** 2 if name == "variance" else 1e-12
    ok = ~np.isnan(got)
    assert np.allclose(got[ok], want[ok], rtol=REL, atol=floor), (got, want)


def finalize_each(agg: Aggregate, ev: Events, idx=None) -> np.ndarray:
    return agg.finalize(run(agg, ev, idx))


def split(ev: Events, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = rng.random(len(ev)) < rng.random()
    return np.flatnonzero(mask), np.flatnonzero(~mask)


# ------------------------------------------------------------------------------------------------ registry


def test_registry_entries():
    assert set(REGISTRY) == {"count", "sum", "mean", "min", "max", "variance", "stddev", "first", "last",
                             "count_distinct", "last_k", "first_k", "top_k", "approx_count_distinct",
                             "approx_quantile"}
    for name, cls in REGISTRY.items():
        assert issubclass(cls, Aggregate) and cls.name == name
        assert cls.kinds and cls.kinds <= KINDS
        assert cls.needs_column == (name != "count")
        assert ("none" in cls.kinds) == (not cls.needs_column)
        assert cls.__doc__ and ">>>" in cls.__doc__, f"{name} has no doctest"
    assert {n for n, c in REGISTRY.items() if c.invertible} == {"count", "sum", "mean", "variance", "stddev",
                                                                   "count_distinct", "top_k"}
    assert {n: set(c.params) for n, c in REGISTRY.items() if c.params} == {
        "last_k": {"k"}, "first_k": {"k"}, "top_k": {"k"}, "approx_quantile": {"q"}}
    assert set(PARAMS) == {n for n, c in REGISTRY.items() if c.params}


@pytest.mark.parametrize("name,kind", REJECTED, ids=_ids(REJECTED))
def test_rejects_kind(name, kind):
    with pytest.raises(AggregateError, match=f"{name}.*{kind}"):
        make(name, kind)
    with pytest.raises(AggregateError):
        REGISTRY[name](kind, **PARAMS.get(name, {}))


def test_make_aggregate():
    assert isinstance(make_aggregate("COUNT_DISTINCT", "str"), REGISTRY["count_distinct"])
    with pytest.raises(AggregateError, match="unknown aggregate 'median'.*supported: approx_count_distinct, "
                                             "approx_quantile, count, count_distinct"):
        make_aggregate("median", "num")
    assert make_aggregate("TOP_K", "num", k=4).k == 4
    with pytest.raises(AggregateError, match="'last_k' needs parameter k"):
        make_aggregate("last_k", "num")
    with pytest.raises(AggregateError, match="'sum' takes no parameters; got k"):
        make_aggregate("sum", "num", k=3)
    with pytest.raises(AggregateError, match="'top_k' takes k; got q"):
        make_aggregate("top_k", "num", k=3, q=0.5)
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(AggregateError, match="k must be an integer >= 1"):
            make_aggregate("first_k", "str", k=bad)
    for bad in (-0.1, 1.5, float("nan"), float("inf"), "0.5", False):
        with pytest.raises(AggregateError, match="q must be"):
            make_aggregate("approx_quantile", "num", q=bad)
    assert make_aggregate("approx_quantile", "num", q=np.float32(0.25)).q == 0.25
    assert make_aggregate("approx_quantile", "num", q=1).q == 1.0


def test_aggregates_import_only_numpy_pandas_stdlib():
    root = pathlib.Path(__file__).resolve().parents[2] / "rayfs" / "aggregates"
    files = sorted(root.glob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                tops = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not tops & {"ray", "lmdb", "msgpack", "pyarrow"}, (path.name, tops)


def test_ray_is_blocked_in_unit_tests():
    with pytest.raises(ImportError):
        import ray  # noqa: F401


# ------------------------------------------------------------------------------------------------ contract


@pytest.mark.parametrize("name,kind", CASES, ids=_ids(CASES))
def test_empty_results(name, kind):
    agg = make(name, kind)
    out = agg.finalize(agg.zero(3))
    if name in COUNTS:
        assert out.dtype == np.int64 and out.tolist() == [0, 0, 0]
    elif name in LISTS:
        assert out.dtype == object and out.tolist() == [[], [], []]
        assert len({id(x) for x in out}) == 3  # a fresh list per row
    elif kind == "num":
        assert out.dtype == np.float64 and np.isnan(out).all()
    else:
        assert out.dtype == object and out.tolist() == [None, None, None]
    state = agg.zero(3)
    empty = np.array([], dtype=np.float64 if kind == "num" else object)
    agg.update(state, np.array([], dtype=np.int64), None if kind == "none" else empty,
               np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert_same(name, agg.finalize(state), out, exact=True)
    slots, part = agg.reduce(np.array([], dtype=np.int64), None if kind == "none" else empty, [], [])
    assert len(slots) == 0 and agg.finalize(part).shape == (0,)


@pytest.mark.parametrize("name,kind", CASES, ids=_ids(CASES))
@SETTINGS
@given(data=st.data(), seed=SEEDS)
def test_merge_of_split_equals_whole(name, kind, data, seed):
    agg = make(name, kind)
    ev = data.draw(events(kind))
    a_idx, b_idx = split(ev, seed)
    a, b = run(agg, ev, a_idx), run(agg, ev, b_idx)
    whole = finalize_each(agg, ev)
    assert_same(name, agg.finalize(agg.merge(a, b)), whole, ev.scale)
    assert_same(name, agg.finalize(agg.merge(b, a)), whole, ev.scale)
    # merge returns a new state and leaves its arguments alone
    assert_same(name, agg.finalize(a), finalize_each(agg, ev, a_idx), exact=True)
    # a reduce's partial states merged into a zero state give the same
    uniq, part = agg.reduce(*ev.pick(np.arange(len(ev))))
    assert np.array_equal(uniq, np.unique(ev.slots))
    full = agg.zero(ev.nslots)
    agg.put(full, uniq, agg.merge(agg.take(full, uniq), part))
    assert_same(name, agg.finalize(full), whole, ev.scale)


@pytest.mark.parametrize("name,kind", CASES, ids=_ids(CASES))
@SETTINGS
@given(data=st.data(), seed=SEEDS)
def test_order_independence(name, kind, data, seed):
    agg = make(name, kind)
    ev = data.draw(events(kind))
    rng = np.random.default_rng(seed)
    whole = finalize_each(agg, ev)
    assert_same(name, finalize_each(agg, ev, rng.permutation(len(ev))), whole, ev.scale)
    # the same events in several update batches, in shuffled order
    state = agg.zero(ev.nslots)
    for chunk in np.array_split(rng.permutation(len(ev)), rng.integers(1, 5)):
        run(agg, ev, chunk, state)
    assert_same(name, agg.finalize(state), whole, ev.scale)


def _msgpack_roundtrip(wire):
    msgpack = pytest.importorskip("msgpack")
    return msgpack.unpackb(msgpack.packb(wire, use_bin_type=True), raw=False)


def _assert_primitive(x):
    if isinstance(x, dict):
        for k, v in x.items():
            assert isinstance(k, str)
            _assert_primitive(v)
    elif isinstance(x, list | tuple):
        for v in x:
            _assert_primitive(v)
    else:
        assert x is None or type(x) in (bool, int, float, str, bytes), type(x)


@pytest.mark.parametrize("name,kind", CASES, ids=_ids(CASES))
@SETTINGS
@given(data=st.data(), seed=SEEDS)
def test_wire_round_trip(name, kind, data, seed):
    agg = make(name, kind)
    ev = data.draw(events(kind))
    a_idx, b_idx = split(ev, seed)
    state = run(agg, ev, a_idx)
    wire = agg.to_wire(state)
    _assert_primitive(wire)
    back = agg.from_wire(_msgpack_roundtrip(wire))
    assert set(back) == set(state)
    for k, v in back.items():
        assert v.dtype == state[k].dtype and v.shape == state[k].shape and v.flags.writeable
        assert not np.shares_memory(v, state[k])
    assert_same(name, agg.finalize(back), agg.finalize(state), exact=True)
    run(agg, ev, b_idx, back)
    run(agg, ev, b_idx, state)
    assert_same(name, agg.finalize(back), agg.finalize(state), exact=True)
    assert_same(name, agg.finalize(agg.from_wire(agg.to_wire(back))), agg.finalize(state), exact=True)


@pytest.mark.parametrize("name,kind", CASES, ids=_ids(CASES))
@SETTINGS
@given(data=st.data())
def test_take_and_put(name, kind, data):
    agg = make(name, kind)
    ev = data.draw(events(kind))
    state = run(agg, ev)
    before = agg.finalize(state)
    idx = np.arange(ev.nslots)[::-1]
    sub = agg.take(state, idx)
    assert_same(name, agg.finalize(sub), before[idx], exact=True)
    # take copies: updating the taken states leaves the original alone
    agg.update(sub, *ev.pick(np.arange(len(ev))))
    assert_same(name, agg.finalize(state), before, exact=True)
    fresh = agg.zero(ev.nslots)
    agg.put(fresh, idx, agg.take(state, idx))
    assert_same(name, agg.finalize(fresh), before, exact=True)


@pytest.mark.parametrize("name,kind", INVERTIBLE, ids=_ids(INVERTIBLE))
@SETTINGS
@given(data=st.data(), seed=SEEDS)
def test_delete_inverts_update(name, kind, data, seed):
    agg = make(name, kind)
    ev = data.draw(events(kind))
    a_idx, b_idx = split(ev, seed)
    # delete . update == identity
    state = run(agg, ev, a_idx)
    want = agg.finalize(state)
    agg.update(state, *ev.pick(b_idx))
    agg.delete(state, *ev.pick(b_idx))
    assert_same(name, agg.finalize(state), want, ev.scale)
    # deleting part of the input == updating with the rest
    state = run(agg, ev)
    agg.delete(state, *ev.pick(b_idx))
    assert_same(name, agg.finalize(state), want, ev.scale)
    # deleting everything gives empty results, and the state keeps working
    agg.delete(state, *ev.pick(a_idx))
    assert_same(name, agg.finalize(state), agg.finalize(agg.zero(ev.nslots)), exact=True)
    run(agg, ev, None, state)
    assert_same(name, agg.finalize(state), finalize_each(agg, ev), ev.scale)


@pytest.mark.parametrize("name,kind", NOT_INVERTIBLE, ids=_ids(NOT_INVERTIBLE))
def test_delete_not_invertible_raises(name, kind):
    agg = make(name, kind)
    state = agg.zero(1)
    values = np.array([1.0]) if kind == "num" else np.array(["a"], dtype=object)
    with pytest.raises(AggregateError, match=name):
        agg.delete(state, np.array([0]), values, np.array([0]), np.array([0]))


def _sorted_with_ranges(ev: Events, seed: int) -> tuple[Events, np.ndarray, np.ndarray]:
    """The events sorted by (slot, ts, seq) and random ranges inside entity runs (empty and single too)."""
    order = np.lexsort((ev.seq, ev.ts, ev.slots))
    srt = Events(ev.nslots, *ev.pick(order))
    rng = np.random.default_rng(seed)
    n = len(srt)
    bounds = np.flatnonzero(np.diff(srt.slots)) + 1
    runs = list(zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [n])), strict=True)) if n else []
    lo, hi = [0, n], [0, n]  # empty ranges at both ends
    for start, end in runs:
        lo += [start, end - 1, start]
        hi += [end, end, start + 1]  # the whole run, its last event, its first event
        for _ in range(4):
            a = int(rng.integers(start, end + 1))
            lo.append(a)
            hi.append(int(rng.integers(a, end + 1)))
    return srt, np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64)


@pytest.mark.parametrize("name,kind", CASES, ids=_ids(CASES))
@SETTINGS
@given(data=st.data(), seed=SEEDS)
def test_range_query_equals_slice(name, kind, data, seed):
    agg = make(name, kind)
    srt, lo, hi = _sorted_with_ranges(data.draw(events(kind)), seed)
    want = [agg.finalize(run(agg, Events(1, np.zeros(len(srt), np.int64), srt.values, srt.ts, srt.seq),
                             np.arange(a, b)))[0] for a, b in zip(lo, hi, strict=True)]
    want = as_results(want, agg.finalize(agg.zero(0)).dtype)
    got = agg.range_query(srt.values, srt.ts, srt.seq, lo, hi)
    assert_same(name, got, want, srt.scale)
    # the generic segment tree agrees with any specialised override
    assert_same(name, Aggregate.range_query(agg, srt.values, srt.ts, srt.seq, lo, hi), want, srt.scale)
    if name == "count_distinct":
        _, codes = np.unique(srt.values.astype(str if kind == "str" else float), return_inverse=True)
        assert_same(name, distinct_in_ranges(codes, lo, hi, expand_limit=0), want)


def test_range_query_rejects_bad_ranges():
    agg = make_aggregate("sum", "num")
    values, ts = np.array([1.0, 2.0]), np.array([0, 1])
    with pytest.raises(ValueError):
        agg.range_query(values, ts, ts, np.array([1]), np.array([3]))
    with pytest.raises(ValueError):
        agg.range_query(values, ts, ts, np.array([2]), np.array([1]))


def test_count_distinct_kernels_agree_on_large_input():
    rng = np.random.default_rng(7)
    n, q = 200_000, 20_000
    codes = rng.integers(0, 5_000, n)
    lo = rng.integers(0, n, q)
    hi = np.minimum(lo + rng.integers(0, 3_000, q), n)
    expanded = distinct_in_ranges(codes, lo, hi)
    assert np.array_equal(expanded, distinct_in_ranges(codes, lo, hi, expand_limit=0))
    prev = previous_occurrence(codes)
    i = rng.integers(0, n, 50)
    for j, p in zip(i, prev[i], strict=True):
        earlier = np.flatnonzero(codes[:j] == codes[j])
        assert p == (earlier[-1] if len(earlier) else -1)


# ------------------------------------------------------------------------------------------------ brute force


def _python_reference(name: str, kind: str, ev: Events) -> list:
    """Each slot's result computed with plain Python."""
    out = []
    for slot in range(ev.nslots):
        idx = [i for i in range(len(ev)) if ev.slots[i] == slot]
        vals = [None] * len(idx) if ev.values is None else [ev.values[i] for i in idx]
        if kind == "num":
            vals = [float(v) for v in vals]
        empty = math.nan if kind == "num" else None
        keyed = sorted(zip(ev.ts[idx].tolist(), ev.seq[idx].tolist(), vals, strict=True))
        k = PARAMS.get(name, {}).get("k")
        if name == "count":
            r = len(vals)
        elif name in ("count_distinct", "approx_count_distinct"):  # HLL is exact on so few values
            r = len(set(vals))
        elif name == "last_k":
            r = [v for _, _, v in keyed[::-1][:k]]
        elif name == "first_k":
            r = [v for _, _, v in keyed[:k]]
        elif name == "top_k":
            counts = {}
            for v in vals:
                counts[v] = counts.get(v, 0) + 1
            r = [{"value": v, "count": c} for v, c in sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))[:k]]
        elif not vals:
            r = empty
        elif name == "sum":
            r = math.fsum(vals)
        elif name == "mean":
            r = statistics.fmean(vals)
        elif name == "min":
            r = min(vals)
        elif name == "max":
            r = max(vals)
        elif name in ("variance", "stddev"):
            if len(vals) < 2:
                r = math.nan
            else:
                r = statistics.variance(vals) if name == "variance" else statistics.stdev(vals)
        elif name in ("first", "last"):
            r = keyed[0 if name == "first" else -1][2]
        elif name == "approx_quantile":  # KLL is exact (the inverse CDF) on up to 200 values
            q = PARAMS[name]["q"]
            r = sorted(vals)[max(math.ceil(q * len(vals)) - 1, 0)]
        else:
            raise AssertionError(f"no reference for {name}")
        out.append(r)
    return out


@pytest.mark.parametrize("name,kind", CASES, ids=_ids(CASES))
@SETTINGS
@given(data=st.data())
def test_against_plain_python(name, kind, data):
    agg = make(name, kind)
    for small in (True, False):
        ev = data.draw(events(kind, small=small))
        got = finalize_each(agg, ev)
        want = _python_reference(name, kind, ev)
        if name in COUNTS:
            want = np.array(want, dtype=np.int64)
        elif kind == "num" and name not in LISTS:
            want = np.array(want, dtype=np.float64)
        else:
            want = objects(want)  # keep a 1-d object array of str / None / lists
        assert_same(name, got, want, ev.scale)


def test_first_last_ties_in_ts_resolved_by_seq():
    ev = Events(1, np.zeros(3, np.int64), np.array(["late", "early", "mid"], dtype=object),
                ts=np.array([5, 5, 5]), seq=np.array([9, 1, 4]))
    assert finalize_each(make_aggregate("first", "str"), ev).tolist() == ["early"]
    assert finalize_each(make_aggregate("last", "str"), ev).tolist() == ["late"]


# ------------------------------------------------------------------------------------------------ range kernels


def _runs_and_ranges(rng, n: int, nruns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Entity runs over ``n`` sorted events and ranges inside them: lifetime prefixes, short windows,
    whole runs, single events and empty ranges."""
    cuts = np.sort(rng.choice(np.arange(1, n), nruns - 1, replace=False))
    starts, ends = np.concatenate(([0], cuts)), np.concatenate((cuts, [n]))
    r = rng.integers(0, nruns, 4 * nruns)
    hi = rng.integers(starts[r], ends[r] + 1)
    lo = np.where(rng.random(len(r)) < 0.5, starts[r], np.maximum(starts[r], hi - rng.integers(0, 9, len(r))))
    single = rng.integers(0, n, 20)
    lo = np.concatenate((lo, starts, single, [0, n, 5]))
    hi = np.concatenate((hi, ends, single + 1, [0, n, 5]))
    return starts, ends, lo, hi


@pytest.mark.parametrize("name,kind", CASES, ids=_ids(CASES))
@pytest.mark.parametrize("seed", range(3))
def test_range_query_override_equals_generic(name, kind, seed):
    """Every specialised range_query equals the generic segment tree (ties, empties, singles, long runs)."""
    rng = np.random.default_rng(seed)
    n = 3000
    _, _, lo, hi = _runs_and_ranges(rng, n, 12)
    if kind == "num":
        values = np.where(rng.random(n) < 0.5, rng.integers(-3, 4, n), rng.normal(0, 1e3, n) + 1e6 * seed)
        values[rng.random(n) < 0.05] = -0.0
    elif kind == "str":
        values = np.array(["".join(rng.choice(ALPHABET, rng.integers(0, 4))) for _ in range(n)], dtype=object)
    else:
        values = None
    ts, seq = np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64)
    agg = make(name, kind)
    got = agg.range_query(values, ts, seq, lo, hi)
    want = Aggregate.range_query(agg, values, ts, seq, lo, hi)
    scale = float(np.abs(values).max()) if kind == "num" else 0.0
    if name == "approx_quantile":
        # KLL compacts with clock-seeded coin flips beyond 200 values: equal there only within its rank
        # error (tests/unit/test_aggregates_rich.py checks the bound); exact and equal up to 200.
        small = hi - lo <= KLL_K
        got, want, lo, hi = got[small], want[small], lo[small], hi[small]
        assert small.sum() > len(small) // 2
    assert_same(name, got, want, scale)
    # The entity-run hint (what replay passes) may speed a kernel up, never change its answer.
    starts, _, _, _ = _runs_and_ranges(np.random.default_rng(seed), n, 12)
    groups = np.searchsorted(starts, np.arange(n), side="right") - 1
    assert_same(name, agg.range_query(values, ts, seq, lo, hi, groups=groups), want, scale)


def test_range_query_on_no_events():
    for name, kind in CASES:
        agg = make(name, kind)
        values = None if kind == "none" else np.zeros(0, np.float64 if kind == "num" else object)
        empty = np.zeros(3, np.int64)
        got = agg.range_query(values, np.zeros(0, np.int64), np.zeros(0, np.int64), empty, empty)
        assert_same(name, got, agg.finalize(agg.zero(3)), exact=True)


def test_cumsum_is_sequential():
    """The compensated prefix sums recover each cumsum step's rounding error, which needs fl(p[k] + x[k])."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, 100_000) * 10.0 ** rng.integers(-8, 9, 100_000)
    p = np.cumsum(x)
    assert np.array_equal(p[1:], p[:-1] + x[1:])


def test_range_sum_survives_cancellation_against_large_prefix():
    """Small window sums next to a prefix of ~1e12 are exact to 1e-9 against math.fsum (no absolute floor)."""
    rng = np.random.default_rng(11)
    big = rng.uniform(0, 1e6, 400_000)
    small = rng.uniform(-0.01, 0.02, 5_000)
    noisy = rng.normal(0, 1e6, 50_000) + 0.1  # large terms that cancel inside the range
    x = np.concatenate((big, small, noisy, small[::-1]))
    n = len(x)
    lo = np.concatenate((rng.integers(len(big), n - 10, 300), [0, len(big), 0]))
    hi = np.concatenate((lo[:-3] + rng.integers(1, 10, 300), [n, len(big) + len(small), len(big)]))
    got_sum = make_aggregate("sum", "num").range_query(x, None, None, lo, hi)
    got_mean = make_aggregate("mean", "num").range_query(x, None, None, lo, hi)
    want = np.array([math.fsum(x[a:b]) for a, b in zip(lo, hi, strict=True)])
    assert np.allclose(got_sum, want, rtol=1e-12, atol=0)
    assert np.allclose(got_mean, want / (hi - lo), rtol=1e-12, atol=0)
    # the fallback for non-finite values is the segment tree
    x[3] = np.inf
    got = make_aggregate("sum", "num").range_query(x, None, None, [0, 4], [5, 6])
    assert got[0] == np.inf and got[1] == math.fsum(x[4:6])


def test_range_variance_adversarial():
    """Large offsets with tiny noise, drifting values and constant runs, against statistics.variance."""
    rng = np.random.default_rng(5)
    noisy = 1e6 + rng.normal(0, 1e-3, 2_000)
    drift = np.linspace(10, 1e6, 2_000) + rng.normal(0, 1, 2_000)
    const = np.full(500, 0.1)
    tenths = np.concatenate(([7.0], np.full(300, 0.3)))  # a constant window after a different first value
    big = rng.uniform(-1e6, 1e6, 20_000)  # large squares before the others in the prefix sums
    x = np.concatenate((big, noisy, drift, const, tenths))
    bounds = np.cumsum([0, len(big), len(noisy), len(drift), len(const), len(tenths)])
    lo, hi = [], []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        h = rng.integers(a, b + 1, 60)
        lo += [a] * 30 + list(np.maximum(a, h[30:] - rng.integers(0, 40, 30)))
        hi += list(h)
    lo, hi = np.array(lo + [bounds[4] + 1]), np.array(hi + [bounds[5]])
    var = make_aggregate("variance", "num").range_query(x, None, None, lo, hi)
    std = make_aggregate("stddev", "num").range_query(x, None, None, lo, hi)
    for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
        if b - a < 2:
            assert np.isnan(var[i]) and np.isnan(std[i])
            continue
        want = statistics.variance(x[a:b].tolist())
        if want == 0:
            assert var[i] == 0.0 and std[i] == 0.0, (a, b, var[i])
        else:
            assert math.isclose(var[i], want, rel_tol=1e-9), (a, b, var[i], want)
            assert math.isclose(std[i], math.sqrt(want), rel_tol=1e-9)
    assert var[-1] == 0.0


def test_range_extremes_of_long_ranges():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 1000, 5000).astype(np.float64)
    lo = rng.integers(0, 2500, 200)
    hi = lo + rng.integers(0, 2500, 200)
    for name, ufunc in (("min", np.min), ("max", np.max)):
        got = make_aggregate(name, "num").range_query(x, None, None, lo, hi)
        want = [ufunc(x[a:b]) if b > a else np.nan for a, b in zip(lo, hi, strict=True)]
        assert np.array_equal(got, np.array(want), equal_nan=True)
