"""Moment and extreme aggregates: ``count``, ``sum``, ``mean``, ``min``, ``max``, ``variance``, ``stddev``.

All are vectorised over slots: a batch of events is grouped by slot with one stable sort and reduced with
``ufunc.reduceat``. ``variance`` and ``stddev`` keep a numerically stable (count, mean, M2) state merged
with Chan et al.'s parallel formula and deleted by running it backwards.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from rayfs.aggregates.base import Aggregate, State, factorize_sorted, run_lengths, segments


class Count(Aggregate):
    """The number of rows (no column) or of non-null values; 0 when empty.

    Example:
        >>> agg = Count("none")
        >>> state = agg.zero(3)
        >>> agg.update(state, np.array([0, 2, 2]), None, None, None)
        >>> agg.finalize(state)
        array([1, 0, 2])
        >>> agg.delete(state, np.array([2]), None, None, None)
        >>> agg.finalize(state)
        array([1, 0, 1])
    """

    name: ClassVar[str] = "count"
    kinds: ClassVar[frozenset[str]] = frozenset({"num", "str", "none"})
    needs_column: ClassVar[bool] = False
    invertible: ClassVar[bool] = True

    def zero(self, n: int) -> State:
        return {"n": np.zeros(n, dtype=np.int64)}

    def _reduce(self, slots, values, ts, seq):
        uniq, counts = np.unique(slots, return_counts=True)
        return uniq, {"n": counts.astype(np.int64)}

    def merge(self, a: State, b: State) -> State:
        return {"n": a["n"] + b["n"]}

    def unmerge(self, a: State, b: State) -> State:
        return {"n": a["n"] - b["n"]}

    def finalize(self, state: State) -> np.ndarray:
        return state["n"].astype(np.int64, copy=True)

    def range_query(self, values, ts, seq, lo, hi) -> np.ndarray:
        """``hi - lo``: the events of a range are its rows (nulls were removed by the caller)."""
        lo, hi = self._check_ranges(lo, hi, self._n_events(values, ts, seq))
        return hi - lo


class Sum(Aggregate):
    """The sum of the values; NaN when empty.

    Example:
        >>> agg = Sum("num")
        >>> state = agg.zero(2)
        >>> agg.update(state, np.array([0, 0]), np.array([1.5, 2.0]), None, None)
        >>> agg.finalize(state)
        array([3.5, nan])
    """

    name: ClassVar[str] = "sum"
    kinds: ClassVar[frozenset[str]] = frozenset({"num"})
    invertible: ClassVar[bool] = True

    def zero(self, n: int) -> State:
        return {"n": np.zeros(n, dtype=np.int64), "s": np.zeros(n, dtype=np.float64)}

    def _reduce(self, slots, values, ts, seq):
        order, starts, uniq = segments(slots)
        return uniq, {"n": run_lengths(starts, len(slots)), "s": np.add.reduceat(values[order], starts)}

    def merge(self, a: State, b: State) -> State:
        return {"n": a["n"] + b["n"], "s": a["s"] + b["s"]}

    def unmerge(self, a: State, b: State) -> State:
        n = a["n"] - b["n"]
        return {"n": n, "s": np.where(n > 0, a["s"] - b["s"], 0.0)}

    def finalize(self, state: State) -> np.ndarray:
        return np.where(state["n"] > 0, state["s"], np.nan)


class Mean(Sum):
    """The arithmetic mean of the values; NaN when empty. State: count and sum.

    Example:
        >>> agg = Mean("num")
        >>> state = agg.zero(2)
        >>> agg.update(state, np.array([1, 1, 1]), np.array([1.0, 2.0, 6.0]), None, None)
        >>> agg.finalize(state)
        array([nan,  3.])
    """

    name: ClassVar[str] = "mean"

    def finalize(self, state: State) -> np.ndarray:
        n = state["n"]
        return np.where(n > 0, state["s"] / np.maximum(n, 1), np.nan)


class _Extreme(Aggregate):
    """Shared implementation of ``min`` and ``max`` for numbers and strings. State: value, has."""

    kinds: ClassVar[frozenset[str]] = frozenset({"num", "str"})
    _ufunc: ClassVar[np.ufunc]

    def zero(self, n: int) -> State:
        if self.kind == "num":
            v = np.zeros(n, dtype=np.float64)
        else:
            v = np.full(n, None, dtype=object)
        return {"v": v, "has": np.zeros(n, dtype=bool)}

    def _reduce(self, slots, values, ts, seq):
        order, starts, uniq = segments(slots)
        if self.kind == "num":
            v = self._ufunc.reduceat(values[order], starts)
        else:
            codes, uniques = factorize_sorted(values)
            v = uniques[self._ufunc.reduceat(codes[order], starts)]
        return uniq, {"v": v, "has": np.ones(len(uniq), dtype=bool)}

    def merge(self, a: State, b: State) -> State:
        ha, hb = a["has"], b["has"]
        v = np.where(ha, a["v"], b["v"])
        both = np.flatnonzero(ha & hb)
        if len(both):
            v[both] = self._ufunc(a["v"][both], b["v"][both])
        return {"v": v, "has": ha | hb}

    def finalize(self, state: State) -> np.ndarray:
        if self.kind == "num":
            return np.where(state["has"], state["v"], np.nan)
        out = state["v"].copy()
        out[~state["has"]] = None
        return out


class Min(_Extreme):
    """The smallest value (numbers or strings); NaN (numbers) or None (strings) when empty.

    Example:
        >>> agg = Min("str")
        >>> state = agg.zero(3)
        >>> agg.update(state, np.array([0, 0, 1]), np.array(["b", "a", "z"], dtype=object), None, None)
        >>> agg.finalize(state)
        array(['a', 'z', None], dtype=object)
    """

    name: ClassVar[str] = "min"
    _ufunc: ClassVar[np.ufunc] = np.minimum


class Max(_Extreme):
    """The largest value (numbers or strings); NaN (numbers) or None (strings) when empty.

    Example:
        >>> agg = Max("num")
        >>> state = agg.zero(2)
        >>> agg.update(state, np.array([1, 1]), np.array([-2.0, 7.0]), None, None)
        >>> agg.finalize(state)
        array([nan,  7.])
    """

    name: ClassVar[str] = "max"
    _ufunc: ClassVar[np.ufunc] = np.maximum


class Variance(Aggregate):
    """The sample variance (ddof=1); NaN with fewer than two values. State: count, mean, M2.

    Example:
        >>> agg = Variance("num")
        >>> state = agg.zero(2)
        >>> agg.update(state, np.array([0, 0, 0, 1]), np.array([1.0, 2.0, 3.0, 5.0]), None, None)
        >>> agg.finalize(state)
        array([ 1., nan])
        >>> agg.delete(state, np.array([0]), np.array([3.0]), None, None)
        >>> agg.finalize(state)
        array([0.5, nan])
    """

    name: ClassVar[str] = "variance"
    kinds: ClassVar[frozenset[str]] = frozenset({"num"})
    invertible: ClassVar[bool] = True

    def zero(self, n: int) -> State:
        return {"n": np.zeros(n, dtype=np.int64), "mean": np.zeros(n, dtype=np.float64),
                "m2": np.zeros(n, dtype=np.float64)}

    def _reduce(self, slots, values, ts, seq):
        order, starts, uniq = segments(slots)
        v = values[order]
        n = run_lengths(starts, len(v))
        mean = np.add.reduceat(v, starts) / n
        dev = v - np.repeat(mean, n)
        return uniq, {"n": n, "mean": mean, "m2": np.add.reduceat(dev * dev, starts)}

    def merge(self, a: State, b: State) -> State:
        na, nb = a["n"], b["n"]
        n = na + nb
        safe = np.maximum(n, 1).astype(np.float64)
        delta = b["mean"] - a["mean"]
        mean = a["mean"] + delta * (nb / safe)
        m2 = a["m2"] + b["m2"] + delta * delta * (na * (nb / safe))
        # Exact when one side is empty (keeps zero states neutral bit for bit).
        mean = np.where(na == 0, b["mean"], np.where(nb == 0, a["mean"], mean))
        m2 = np.where(na == 0, b["m2"], np.where(nb == 0, a["m2"], m2))
        return {"n": n, "mean": mean, "m2": m2}

    def unmerge(self, a: State, b: State) -> State:
        n, nb = a["n"], b["n"]
        nc = n - nb
        mean = a["mean"] + (a["mean"] - b["mean"]) * (nb / np.maximum(nc, 1))
        delta = b["mean"] - mean
        m2 = a["m2"] - b["m2"] - delta * delta * (nc * (nb / np.maximum(n, 1)))
        m2 = np.where(nc > 1, np.maximum(m2, 0.0), 0.0)
        mean = np.where(nc > 0, mean, 0.0)
        mean = np.where(nb == 0, a["mean"], mean)
        m2 = np.where(nb == 0, a["m2"], m2)
        return {"n": nc, "mean": mean, "m2": m2}

    def finalize(self, state: State) -> np.ndarray:
        n = state["n"]
        return np.where(n > 1, state["m2"] / np.maximum(n - 1, 1), np.nan)


class Stddev(Variance):
    """The sample standard deviation (ddof=1); NaN with fewer than two values.

    Example:
        >>> agg = Stddev("num")
        >>> state = agg.zero(1)
        >>> agg.update(state, np.array([0, 0, 0]), np.array([2.0, 4.0, 6.0]), None, None)
        >>> agg.finalize(state)
        array([2.])
    """

    name: ClassVar[str] = "stddev"

    def finalize(self, state: State) -> np.ndarray:
        return np.sqrt(super().finalize(state))
