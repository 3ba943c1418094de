"""Approximate aggregates on Apache DataSketches: ``approx_count_distinct`` (HLL) and ``approx_quantile`` (KLL).

The state of a slot is its sketch serialized to ``bytes`` (``None``: no value yet) in an object array, so
states are immutable, msgpack-able as they are and cheap to copy; folding a batch deserializes each
touched slot's sketch once, updates it with the slot's values and serializes it again.

``approx_count_distinct``
    A HyperLogLog sketch with ``lg_k = 12`` (4096 registers, stored as HLL_4). The result is the estimate
    rounded to the nearest integer (int64), 0 when empty. Up to 384 distinct values the sketch keeps
    the (26-bit) hashed values themselves and the estimate is exact but for hash collisions (about
    ``d**2 / 2**27`` of ``d`` values); beyond, the relative standard error is ``1.04 / sqrt(4096)``
    ≈ 1.6% (3 standard errors ≈ 4.9%). The estimate is computed from the sketch's registers alone (HLL's
    composite estimator, never the order-dependent HIP accumulator), so it is deterministic: the same
    set of values gives the same answer however the events were batched, merged or ordered. Values
    are hashed as DataSketches hashes Python floats (numbers), str and int (entity keys); the empty
    string, which DataSketches would ignore, is hashed as a NaN double (see :func:`hll_items`).

``approx_quantile``
    A KLL sketch with ``k = 200``. The result is a value of the input whose normalized rank is within
    about 1.33% of ``q`` (DataSketches' single-sided normalized rank error for k = 200, a 99% bound),
    NaN when empty. The quantile is the inverse CDF: the smallest value ``v`` with
    ``#{x <= v} >= q * n``, i.e. ``sorted(x)[max(ceil(q * n) - 1, 0)]``; ``q = 0`` is the exact minimum
    and ``q = 1`` the exact maximum (KLL tracks both). Up to 200 values per entity (per range) the
    sketch holds every value and the result is this exact quantile. Beyond, KLL compacts with random coin
    flips which DataSketches seeds from the clock (not settable from Python): two computations over the
    same events (online vs training set, a rebuild from the log) may then differ, each within the error.

Range queries (point-in-time replay, windows) build each range's sketch from the range's events; ranges
with the same start share one sketch extended range by range (lifetime features: one pass per entity).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
from datasketches import HLL_4, hll_sketch, hll_union, kll_doubles_sketch

from rayfs.aggregates.base import Aggregate, State, objects, segments
from rayfs.errors import AggregateError

__all__ = ["ApproxCountDistinct", "ApproxQuantile", "HLL_LG_K", "HLL_RSE", "KLL_K", "KLL_RANK_ERROR", "hll_estimate",
           "hll_items"]

HLL_LG_K = 12
"""log2 of the number of HLL registers: relative standard error 1.04 / sqrt(2**12) ≈ 1.6%."""
HLL_RSE = 1.04 / np.sqrt(2.0**HLL_LG_K)
KLL_K = 200
"""KLL's accuracy parameter: normalized rank error ≈ 1.33% (single-sided, 99% confidence)."""
KLL_RANK_ERROR = kll_doubles_sketch(KLL_K).normalized_rank_error(False)


def hll_estimate(sk: hll_sketch) -> float:
    """The sketch's distinct-count estimate from its registers or coupons alone (order-independent).

    A sketch updated value by value estimates with its HIP accumulator, which depends on the order of
    the values; a union of sketches cannot and uses the composite estimator. Merging the sketch with
    itself forces the latter, so equal sets of values always give equal estimates.
    """
    u = hll_union(HLL_LG_K)
    u.update(sk)
    u.update(sk)
    return u.get_estimate()


def hll_items(values: list) -> list:
    """Python values as given to ``hll_sketch.update``: the empty string becomes NaN.

    DataSketches ignores empty strings; a NaN double stands in for them (string-kind values are str or
    int keys, never floats, so nothing else maps there).
    """
    return [np.nan if v == "" else v for v in values]


def _pairs(slots: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """The distinct (slot, value) pairs: sorted unique slots, the start of each slot's run, the values."""
    codes, uniques = pd.factorize(values)
    width = np.int64(len(uniques))
    pairs = np.unique(slots * width + codes)
    pslot = pairs // width
    _, starts, uniq = segments(pslot)
    vals = np.asarray(uniques, dtype=values.dtype)[pairs % width].tolist()
    return uniq, starts, hll_items(vals) if values.dtype == object else vals


class _Sketch(Aggregate):
    """Shared machinery: state ``{"sk": object array of bytes or None}``."""

    def zero(self, n: int) -> State:
        return {"sk": np.full(n, None, dtype=object)}

    def _new(self):
        raise NotImplementedError

    def _load(self, raw: bytes | None):
        raise NotImplementedError

    def _add(self, sk, values) -> None:
        raise NotImplementedError

    def _dump(self, sk) -> bytes:
        raise NotImplementedError

    def _groups(self, slots: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, list]:
        """Sorted unique slots and, per slot, the values to add (a Python list or an array)."""
        order, starts, uniq = segments(slots)
        v = values[order]
        bounds = np.append(starts, len(v)).tolist()
        return uniq, [v[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _reduce(self, slots, values, ts, seq):
        uniq, groups = self._groups(slots, values)
        out = []
        for vals in groups:
            sk = self._new()
            self._add(sk, vals)
            out.append(self._dump(sk))
        return uniq, {"sk": objects(out, len(out))}

    def prepare(self, state: State, slots, values, ts, seq) -> tuple[np.ndarray, State]:
        """Each touched slot's sketch deserialized once and updated with the slot's values."""
        slots, values, _, _ = self._prepare(slots, values, None, None)
        if len(slots) == 0:
            return slots, self.zero(0)
        uniq, groups = self._groups(slots, values)
        out = []
        for raw, vals in zip(state["sk"][uniq].tolist(), groups, strict=True):
            sk = self._load(raw)
            self._add(sk, vals)
            out.append(self._dump(sk))
        return uniq, {"sk": objects(out, len(out))}

    def range_query(self, values, ts, seq, lo, hi, groups=None) -> np.ndarray:
        """Each range's sketch built from its events; ranges sharing a start extend one sketch in order."""
        lo, hi, out, x, hit = self._range_start(values, ts, seq, lo, hi)
        if x is None or not len(hit):
            return out
        x = self._range_values(x)
        order = hit[np.lexsort((hi[hit], lo[hit]))]
        cur_lo, cur_hi, sk = -1, -1, None
        for i, a, b in zip(order.tolist(), lo[order].tolist(), hi[order].tolist(), strict=True):
            if a != cur_lo:
                sk, cur_lo, cur_hi = self._new(), a, a
            self._add(sk, x[cur_hi:b])
            cur_hi = b
            out[i] = self._value(sk)
        return out

    def _range_values(self, x: np.ndarray):
        return x

    def _value(self, sk):
        raise NotImplementedError


class ApproxCountDistinct(_Sketch):
    """The approximate number of distinct values (HyperLogLog, lg_k = 12: ≈ 1.6% relative standard
    error), rounded to an int64; 0 when empty. Exact but for hash collisions below a few hundred values.

    Example:
        >>> agg = ApproxCountDistinct("str")
        >>> state = agg.zero(2)
        >>> agg.update(state, np.array([0, 0, 0]), np.array(["a", "b", "a"], dtype=object), None, None)
        >>> agg.finalize(state)
        array([2, 0])
        >>> big = ApproxCountDistinct("num")
        >>> s = big.zero(1)
        >>> big.update(s, np.zeros(100_000, dtype=np.int64), np.arange(100_000.0), None, None)
        >>> abs(int(big.finalize(s)[0]) - 100_000) < 3 * 0.0163 * 100_000
        True
    """

    name: ClassVar[str] = "approx_count_distinct"
    kinds: ClassVar[frozenset[str]] = frozenset({"num", "str"})
    mixed_keys: ClassVar[bool] = True

    def _new(self) -> hll_sketch:
        return hll_sketch(HLL_LG_K, HLL_4)

    def _load(self, raw: bytes | None) -> hll_sketch:
        return self._new() if raw is None else hll_sketch.deserialize(raw)

    def _add(self, sk: hll_sketch, values) -> None:
        for v in values:
            sk.update(v)

    def _dump(self, sk: hll_sketch) -> bytes:
        return sk.serialize_compact()

    def _groups(self, slots: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, list]:
        # Distinct (slot, value) pairs only: a repeated value changes nothing. Python values for the
        # sketch's update overloads (float for numbers; str or int for strings and keys).
        uniq, starts, vals = _pairs(slots, values)
        bounds = np.append(starts, len(vals)).tolist()
        return uniq, [vals[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _range_values(self, x: np.ndarray) -> list:
        return hll_items(x.tolist()) if x.dtype == object else x.tolist()

    def _value(self, sk: hll_sketch) -> int:
        return round(hll_estimate(sk))

    def merge(self, a: State, b: State) -> State:
        return _merge_serialized(a, b, _hll_union_bytes)

    def finalize(self, state: State) -> np.ndarray:
        sk = state["sk"]
        return np.fromiter((0 if raw is None else round(hll_estimate(hll_sketch.deserialize(raw)))
                            for raw in sk.tolist()), dtype=np.int64, count=len(sk))


class ApproxQuantile(_Sketch):
    """The approximate ``q``-quantile (KLL, k = 200: normalized rank error ≈ 1.33%) of the values; NaN
    when empty. Exact (the inverse CDF, ``sorted(x)[max(ceil(q * n) - 1, 0)]``) up to 200 values.

    Example:
        >>> agg = ApproxQuantile("num", q=0.5)
        >>> state = agg.zero(2)
        >>> agg.update(state, np.array([1, 1, 1, 1]), np.array([4.0, 1.0, 3.0, 2.0]), None, None)
        >>> agg.finalize(state)
        array([nan,  2.])
        >>> ApproxQuantile("num", q=1.0).range_query(np.array([4.0, 1.0, 3.0]), None, None, [0, 1], [3, 1])
        array([ 4., nan])
    """

    name: ClassVar[str] = "approx_quantile"
    kinds: ClassVar[frozenset[str]] = frozenset({"num"})
    params: ClassVar[dict[str, type]] = {"q": float}
    q: float

    def _check(self) -> None:
        if not 0.0 <= self.q <= 1.0:
            raise AggregateError(f"aggregate {self.name!r}: q must be in [0, 1], not {self.q!r}")

    def _new(self) -> kll_doubles_sketch:
        return kll_doubles_sketch(KLL_K)

    def _load(self, raw: bytes | None) -> kll_doubles_sketch:
        return self._new() if raw is None else kll_doubles_sketch.deserialize(raw)

    def _add(self, sk: kll_doubles_sketch, values: np.ndarray) -> None:
        if len(values):
            sk.update(np.ascontiguousarray(values, dtype=np.float64))

    def _dump(self, sk: kll_doubles_sketch) -> bytes:
        return sk.serialize()

    def _value(self, sk: kll_doubles_sketch) -> float:
        if self.q == 0.0:  # KLL tracks the exact extremes; its retained items may have lost them
            return sk.get_min_value()
        if self.q == 1.0:
            return sk.get_max_value()
        return sk.get_quantile(self.q, True)

    def merge(self, a: State, b: State) -> State:
        return _merge_serialized(a, b, _kll_merge_bytes)

    def finalize(self, state: State) -> np.ndarray:
        sk = state["sk"]
        return np.fromiter((np.nan if raw is None else self._value(kll_doubles_sketch.deserialize(raw))
                            for raw in sk.tolist()), dtype=np.float64, count=len(sk))


def _merge_serialized(a: State, b: State, combine) -> State:
    """Elementwise merge of two vectors of serialized sketches (``None``: empty) with ``combine``."""
    out = [rb if ra is None else ra if rb is None else combine(ra, rb)
           for ra, rb in zip(a["sk"].tolist(), b["sk"].tolist(), strict=True)]
    return {"sk": objects(out, len(out))}


def _hll_union_bytes(ra: bytes, rb: bytes) -> bytes:
    u = hll_union(HLL_LG_K)
    u.update(hll_sketch.deserialize(ra))
    u.update(hll_sketch.deserialize(rb))
    return u.get_result(HLL_4).serialize_compact()


def _kll_merge_bytes(ra: bytes, rb: bytes) -> bytes:
    sk = kll_doubles_sketch.deserialize(ra)
    sk.merge(kll_doubles_sketch.deserialize(rb))
    return sk.serialize()
