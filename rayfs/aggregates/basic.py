"""Moment and extreme aggregates: ``count``, ``sum``, ``mean``, ``min``, ``max``, ``variance``, ``stddev``.

All are vectorised over slots: a batch of events is grouped by slot with one stable sort and reduced with
``ufunc.reduceat``. ``variance`` and ``stddev`` keep a numerically stable (count, mean, M2) state merged
with Chan et al.'s parallel formula and deleted by running it backwards.

Range queries over sorted events (point-in-time replay) bypass the generic segment tree: ``sum``, ``mean``,
``variance`` and ``stddev`` use float64 prefix sums whose per-step rounding errors are recovered exactly
(TwoSum) and summed in further prefix arrays, combined per range in double-double arithmetic; ``min`` and
``max`` use a level-by-level sparse table (strings through their sorted codes).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from rayfs.aggregates.base import Aggregate, State, factorize_sorted, optional_values, run_lengths, segments

__all__ = ["Count", "Max", "Mean", "Min", "Stddev", "Sum", "Variance"]


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knuth's TwoSum: ``s = fl(a + b)`` and ``e`` with ``s + e == a + b`` exactly (round to nearest)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Veltkamp's split of float64 ``x`` into two halves of at most 26 significant bits each."""
    c = x * 134217729.0  # 2**27 + 1
    hi = c - (c - x)
    return hi, x - hi


def _two_prod(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dekker's TwoProduct: ``p = fl(a * b)`` and ``e`` with ``p + e == a * b`` exactly (no FMA needed)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


_LEVELS = 3
"""Prefix-sum levels: the sums, their exact step errors, the step errors of those (error ~ u**3)."""


def _step_errors(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The exact rounding error of each step ``p[k+1] = fl(p[k] + x[k])`` of a sequential cumsum (TwoSum)."""
    a, s = p[:-1], p[1:]
    bb = s - a
    err = s - bb
    np.subtract(a, err, out=err)
    np.subtract(x, bb, out=bb)
    return np.add(err, bb, out=err)


def _prefix_sums(x: np.ndarray, extra: np.ndarray | None = None) -> list[np.ndarray]:
    """Compensated float64 prefix sums of ``x + extra``: levels ``P_0, P_1, P_2`` of length ``len(x) + 1``.

    ``P_0 = cumsum(x)`` is sequential (``np.add.accumulate``: ``P_0[k+1] = fl(P_0[k] + x[k])``), so the
    rounding error of each step is recovered exactly by TwoSum and becomes the input of the next level;
    ``extra`` (terms below the rounding of ``x``) joins level 1 through another TwoSum. Only the last
    level rounds without recovery: ``sum_i P_i[k] = sum(x[:k] + extra[:k])`` up to ``~k**2 u**3 max|P_0|``.
    """
    out = []
    for level in range(_LEVELS):
        p = np.empty(len(x) + 1)
        p[0] = 0.0
        np.cumsum(x, out=p[1:])
        out.append(p)
        if level == _LEVELS - 1:
            break
        x = _step_errors(p, x)
        if extra is not None:
            x, extra = _two_sum(x, extra)
            if level == _LEVELS - 2:
                x += extra
    return out


def _range_sums(prefix: list[np.ndarray], lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sums over ``[lo, hi)`` from :func:`_prefix_sums` as normalised double-double pairs ``(high, low)``.

    Every level's difference is split exactly (TwoSum) and accumulated in double-double arithmetic, so no
    rounding proportional to the prefix magnitude survives except the last level's (``~u**3``).
    """
    s, t = _two_sum(np.take(prefix[0], hi), -np.take(prefix[0], lo))
    t += np.take(prefix[-1], hi) - np.take(prefix[-1], lo)  # ~u**2 of s: its rounding does not matter
    for p in prefix[1:-1]:
        d, e = _two_sum(np.take(p, hi), -np.take(p, lo))
        s, c = _two_sum(s, d)
        t += c + e
    return _two_sum(s, t)


def _range_extreme(ufunc: np.ufunc, x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``ufunc.reduce(x[lo[i]:hi[i]])`` for every non-empty range (garbage for empty ones).

    A sparse table built level by level, keeping only the current level (``O(n)`` memory): at level ``k``
    ``t[i]`` reduces ``x[i:i + 2**k]`` and every range with ``2**k <= hi - lo < 2**(k + 1)`` is answered
    by two overlapping blocks, ``ufunc(t[lo], t[hi - 2**k])``; ``log2`` of the longest range levels.
    """
    m = hi - lo
    out = np.empty(len(lo), dtype=x.dtype)
    ok = np.flatnonzero(m > 0)
    if not len(ok):
        return out
    level = np.frexp(m[ok].astype(np.float64))[1] - 1  # floor(log2(m)), exact for m < 2**53
    order = np.argsort(level, kind="stable")
    ok, level = ok[order], level[order]
    bounds = np.searchsorted(level, np.arange(int(level[-1]) + 2))
    t = x
    for k in range(int(level[-1]) + 1):
        sel = ok[bounds[k]:bounds[k + 1]]
        if len(sel):
            out[sel] = ufunc(t[lo[sel]], t[hi[sel] - (1 << k)])
        if k < level[-1]:
            t = ufunc(t[:-(1 << k)], t[1 << k:])
    return out


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
    mixed_keys: ClassVar[bool] = True

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

    def range_query(self, values, ts, seq, lo, hi, groups=None) -> np.ndarray:
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

    def range_query(self, values, ts, seq, lo, hi, groups=None) -> np.ndarray:
        """Range sums from compensated prefix sums (no segment tree); NaN for empty ranges.

        A range sum is the difference of two prefix sums, and differences of large prefix sums cancel
        (a window sum of 0.01 next to a prefix of 1e13). Here every prefix is carried exactly as three
        float64 levels (:func:`_prefix_sums`: the sums, their exactly recovered step errors, the errors of
        those) and the differences are combined in double-double (:func:`_range_sums`). With
        ``u = 2**-53``, ``S`` the exact range sum, ``m = hi - lo``, ``n = hi`` and
        ``M = max_k<=hi |sum(values[:k])|``, the result is within ``u |S| (1 + 8u) + 2 m n**2 u**3 M``:
        for values up to 1e6 and ``m, n <= 1e7`` (``M <= 1e13``) the absolute term is below 3e-14, so
        cancellation against the prefix never matters for a relative tolerance of 1e-9 (a range whose own
        values cancel is as exact as its correctly rounded sum). Non-finite values use the segment tree.
        """
        n = self._n_events(values, ts, seq)
        lo, hi = self._check_ranges(lo, hi, n)
        _, x, _, _ = self._prepare(np.zeros(n, dtype=np.int64), values, None, None)
        if not np.isfinite(x).all():
            return Aggregate.range_query(self, values, ts, seq, lo, hi)
        return self._finish(*_range_sums(_prefix_sums(x), lo, hi), hi - lo)

    def _finish(self, high: np.ndarray, low: np.ndarray, m: np.ndarray) -> np.ndarray:
        return np.where(m > 0, high, np.nan)


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

    def _finish(self, high: np.ndarray, low: np.ndarray, m: np.ndarray) -> np.ndarray:
        safe = np.maximum(m, 1)
        return np.where(m > 0, high / safe + low / safe, np.nan)


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
        return optional_values(state["v"], state["has"], self.kind)

    def range_query(self, values, ts, seq, lo, hi, groups=None) -> np.ndarray:
        """Range extremes from a sparse table (:func:`_range_extreme`); strings via their sorted codes."""
        lo, hi, out, x, hit = self._range_start(values, ts, seq, lo, hi)
        if x is None:
            return out
        if self.kind == "num":
            out[hit] = _range_extreme(self._ufunc, x, lo, hi)[hit]
        else:
            codes, uniques = factorize_sorted(x)
            out[hit] = uniques[_range_extreme(self._ufunc, codes, lo, hi)[hit]]
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
    _root: ClassVar[bool] = False

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

    def range_query(self, values, ts, seq, lo, hi, groups=None) -> np.ndarray:
        """Range variances from compensated prefix sums of shifted values and of their exact squares.

        Variance is shift-invariant, so each event is shifted by the first value of its *component*: the
        maximal run of events that no range boundary splits (part of one entity's run, found from the
        ranges alone). The shifted values are kept exact (``y = yh + yl``, TwoSum) and so are their
        squares (TwoProduct), their range sums ``S`` and ``Q`` are double-double pairs (see
        :meth:`Sum.range_query`), and the numerator ``m Q - S**2`` is evaluated in double-double, so the
        cancellation of a large mean against a tiny spread costs ``~u**2 (mean / std)**2`` relative
        (``u = 2**-53``) rather than ``u (mean / std)**2``: 1e6 + noise of 1e-3 would be right to ~1e-14
        even without the shift. The prefix sums add at most ``2 m n**2 u**3 max|prefix|`` to ``S`` and ``Q``.
        Ranges whose values are all equal are exactly 0; fewer than two values give NaN; tiny negative
        results are clamped to 0. Non-finite values fall back to the segment tree.
        """
        n = self._n_events(values, ts, seq)
        lo, hi = self._check_ranges(lo, hi, n)
        _, x, _, _ = self._prepare(np.zeros(n, dtype=np.int64), values, None, None)
        if not np.isfinite(x).all():
            return Aggregate.range_query(self, values, ts, seq, lo, hi)
        m = hi - lo
        many = m > 1
        # split[b] > 0 iff some range holds both b - 1 and b; components start where it is 0.
        split = np.cumsum(np.bincount(lo[many] + 1, minlength=n + 1) - np.bincount(hi[many], minlength=n + 1))
        first = np.maximum.accumulate(np.where(split[:n] > 0, 0, np.arange(n)))
        yh, yl = _two_sum(x, -x[first])
        p, e = _two_prod(yh, yh)
        if yl.any():
            e += 2 * yh * yl + yl * yl
        else:
            yl = None  # every shift was exact (the usual case): skip the extra terms
        sh, sl = _range_sums(_prefix_sums(yh, yl), lo, hi)
        qh, ql = _range_sums(_prefix_sums(p, e), lo, hi)
        mf = m.astype(np.float64)
        a1, a2 = _two_prod(mf, qh)
        b1, b2 = _two_prod(sh, sh)
        d1, d2 = _two_sum(a1, -b1)
        d = d1 + (d2 + ((a2 + mf * ql) - (b2 + 2 * sh * sl)))
        var = np.maximum(d / np.maximum(mf * (mf - 1), 1), 0)
        changes = np.concatenate(([0], np.cumsum(x[1:] != x[:-1])))  # changes[j]: i <= j with x[i] != x[i-1]
        last = np.maximum(hi - 1, 0)
        var[many & (changes[last] == changes[np.minimum(lo, last)])] = 0.0
        var[~many] = np.nan
        return np.sqrt(var) if self._root else var


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
    _root: ClassVar[bool] = True

    def finalize(self, state: State) -> np.ndarray:
        return np.sqrt(super().finalize(state))
