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
    """The exact rounding error of each step ``p[k+1] = fl(p[k] + x[k])`` of a sequential cumsum (TwoSum),
    along the last axis."""
    a, s = p[..., :-1], p[..., 1:]
    bb = s - a
    err = s - bb
    np.subtract(a, err, out=err)
    np.subtract(x, bb, out=bb)
    return np.add(err, bb, out=err)


def _prefix_sums(x: np.ndarray, extra: np.ndarray | None = None) -> list[np.ndarray]:
    """Compensated float64 prefix sums of ``x + extra`` along the last axis: levels ``P_0, P_1, P_2``, each
    one longer than ``x`` on that axis (a leading 0).

    ``P_0 = cumsum(x)`` is sequential (``np.add.accumulate``: ``P_0[k+1] = fl(P_0[k] + x[k])``), so the
    rounding error of each step is recovered exactly by TwoSum and becomes the input of the next level;
    ``extra`` (terms below the rounding of ``x``) joins level 1 through another TwoSum. Only the last
    level rounds without recovery: ``sum_i P_i[k] = sum(x[:k] + extra[:k])`` up to ``~k**2 u**3 max|P_0|``.
    """
    out = []
    for level in range(_LEVELS):
        p = np.empty(x.shape[:-1] + (x.shape[-1] + 1,))
        p[..., 0] = 0.0
        np.cumsum(x, axis=-1, out=p[..., 1:])
        out.append(p)
        if level == _LEVELS - 1:
            break
        x = _step_errors(p, x)
        if extra is not None:
            x, extra = _two_sum(x, extra)
            if level == _LEVELS - 2:
                x += extra
    return out


class _Segments:
    """The sorted events cut into segments that no range crosses, for prefix sums restarted per segment.

    A prefix sum shared by every segment lets one segment's values reach another's range differences: an
    overflow to inf makes them NaN, and a huge magnitude swamps their precision. Here each segment's prefix
    sums start from 0 and see only its own events, computed exactly as for that segment alone (a
    sequential cumsum of its values), so a range's result depends only on its segment's events.

    Vectorised without a loop per segment: segments are grouped by their length rounded up to a power of
    two ``W`` (at most ``log2(n) + 1`` groups), and each group is one ``(segments, W)`` array zero-padded on
    the right, cumulated along its rows; padding costs at most twice the memory.

    Args:
        starts: the first event of each segment, increasing, starting at 0.
        n: the number of events (> 0).
    """

    def __init__(self, starts: np.ndarray, n: int) -> None:
        self.starts = starts
        self.lengths = np.diff(np.append(starts, n))
        self.seg = np.repeat(np.arange(len(starts)), self.lengths)  # the segment of each event
        self.width = np.left_shift(np.int64(1), np.frexp((self.lengths - 1).astype(np.float64))[1]).astype(np.int64)
        self.blocks: list[tuple[int, int, np.ndarray]] = []  # (W, offset in the padded values, segments)
        self.base = np.empty(len(starts), dtype=np.int64)  # prefix position of event i: base[seg[i]] + i
        pad_base = np.empty(len(starts), dtype=np.int64)
        offset = prefix_offset = 0
        for w in np.unique(self.width).tolist():
            segs = np.flatnonzero(self.width == w)
            rows = np.arange(len(segs), dtype=np.int64)
            self.blocks.append((w, offset, segs))
            pad_base[segs] = offset + rows * w - starts[segs]
            self.base[segs] = prefix_offset + rows * (w + 1) - starts[segs]
            offset += len(segs) * w
            prefix_offset += len(segs) * (w + 1)
        self.padded = offset
        self.pad_pos = pad_base[self.seg] + np.arange(n, dtype=np.int64)
        self.shift = self.base[self.seg]  # prefix position of a range starting at event i: shift[i] + i

    @classmethod
    def of(cls, n: int, lo: np.ndarray, hi: np.ndarray, groups: np.ndarray | None) -> _Segments:
        """Segments from the entity of each event (``groups``, non-decreasing), else the components of the
        ranges: maximal runs of events that every range either covers whole or misses."""
        if groups is not None:
            groups = np.asarray(groups).reshape(-1)
            cut = np.concatenate(([True], groups[1:] != groups[:-1]))
        else:
            many = hi - lo > 1
            # inside[b] > 0 iff some range holds both b - 1 and b
            inside = np.cumsum(np.bincount(lo[many] + 1, minlength=n + 1) - np.bincount(hi[many], minlength=n + 1))
            cut = inside[:n] == 0
        return cls(np.flatnonzero(cut), n)

    def prefix_sums(self, x: np.ndarray, extra: np.ndarray | None = None) -> list[np.ndarray]:
        """:func:`_prefix_sums` of every segment on its own, as flat arrays indexed by :meth:`positions`."""
        levels: list[list[np.ndarray]] = [[] for _ in range(_LEVELS)]
        xp = np.zeros(self.padded)
        xp[self.pad_pos] = x
        ep = None
        if extra is not None:
            ep = np.zeros(self.padded)
            ep[self.pad_pos] = extra
        for w, offset, segs in self.blocks:
            span = slice(offset, offset + len(segs) * w)
            block = _prefix_sums(xp[span].reshape(len(segs), w), None if ep is None else ep[span].reshape(len(segs), w))
            for out, level in zip(levels, block, strict=True):
                out.append(level.reshape(-1))
        return [np.concatenate(parts) for parts in levels]

    def positions(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prefix positions of the ranges ``[lo, hi)`` (empty ranges: both 0, a difference of 0)."""
        hit = hi > lo
        shift = self.shift[np.minimum(lo, len(self.shift) - 1)]
        return np.where(hit, shift + lo, 0), np.where(hit, shift + hi, 0)

    def tree_query(self, agg: Aggregate, x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """The generic segment tree (:meth:`Aggregate.range_query`) over the segments of the ranges only,
        each placed at a multiple of its width ``W`` (widest first) so that its part of the tree has the
        shape of its own tree alone: the result depends only on the segment's events."""
        seg = self.seg[lo]
        used = np.unique(seg)
        used = used[np.argsort(-self.width[used], kind="stable")]
        place = np.zeros(len(self.starts), dtype=np.int64)
        place[used] = np.cumsum(self.width[used]) - self.width[used]
        total = int(self.width[used].sum())
        lengths = self.lengths[used]
        src = np.repeat(self.starts[used], lengths) + _ramp(lengths)
        dst = np.repeat(place[used], lengths) + _ramp(lengths)
        xs = np.zeros(total)
        xs[dst] = x[src]
        shift = place[seg] - self.starts[seg]
        return Aggregate.range_query(agg, xs, None, None, lo + shift, hi + shift)


def _ramp(lengths: np.ndarray) -> np.ndarray:
    """``0, 1, ..., L - 1`` for each run length ``L``, concatenated."""
    total = int(lengths.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _nonfinite_in(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Whether each range ``[lo, hi)`` holds a non-finite value."""
    bad = np.zeros(len(x) + 1, dtype=np.int64)
    np.cumsum(~np.isfinite(x), out=bad[1:])
    return bad[hi] > bad[lo]


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

    @np.errstate(over="ignore", invalid="ignore")  # overflowing ranges are detected and redone below
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
        values cancel is as exact as its correctly rounded sum). The prefix sums restart at every entity
        (``groups``; without it, at every run of events no range crosses): see :class:`_Segments`. Ranges
        holding non-finite values, or whose sum overflows, use the segment tree over their entity's events.
        """
        n = self._n_events(values, ts, seq)
        lo, hi = self._check_ranges(lo, hi, n)
        if n == 0:
            return self._finish(np.zeros(len(lo)), np.zeros(len(lo)), hi - lo)
        _, x, _, _ = self._prepare(np.zeros(n, dtype=np.int64), values, None, None)
        finite = np.isfinite(x)
        segs = _Segments.of(n, lo, hi, groups)
        plo, phi = segs.positions(lo, hi)
        out = self._finish(*_range_sums(segs.prefix_sums(np.where(finite, x, 0.0)), plo, phi), hi - lo)
        # Ranges holding inf or NaN, or whose own sum overflows: the segment tree, like the online fold.
        redo = np.flatnonzero((hi > lo) & ~np.isfinite(out))
        if not finite.all():
            redo = np.union1d(redo, np.flatnonzero(_nonfinite_in(x, lo, hi)))
        if len(redo):
            out[redo] = segs.tree_query(self, x, lo[redo], hi[redo])
        return out

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

    @np.errstate(over="ignore", invalid="ignore")  # overflow gives inf (or NaN with inf inputs), as it should
    def _reduce(self, slots, values, ts, seq):
        order, starts, uniq = segments(slots)
        v = values[order]
        n = run_lengths(starts, len(v))
        # Shift each slot's values by its first finite one (variance is shift-invariant), so equal huge
        # values ([1e308, 1e308]) give 0 as the range query does, not an overflowed sum's inf.
        first = v[starts]
        shift = np.repeat(np.where(np.isfinite(first), first, 0.0), n)
        y = v - shift
        mean_y = np.add.reduceat(y, starts) / n
        dev = y - np.repeat(mean_y, n)
        return uniq, {"n": n, "mean": mean_y + shift[starts], "m2": np.add.reduceat(dev * dev, starts)}

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

    @np.errstate(over="ignore", invalid="ignore")  # overflowing ranges are detected and redone below
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
        results are clamped to 0. The prefix sums restart at every entity (see :class:`_Segments`); ranges
        holding non-finite values, or whose squares overflow, use the segment tree over their entity's events.
        """
        n = self._n_events(values, ts, seq)
        lo, hi = self._check_ranges(lo, hi, n)
        m = hi - lo
        many = m > 1
        if n == 0:
            return np.full(len(lo), np.nan)
        _, x, _, _ = self._prepare(np.zeros(n, dtype=np.int64), values, None, None)
        raw, finite = x, np.isfinite(x)
        x = np.where(finite, x, 0.0)
        # split[b] > 0 iff some range holds both b - 1 and b; components start where it is 0.
        split = np.cumsum(np.bincount(lo[many] + 1, minlength=n + 1) - np.bincount(hi[many], minlength=n + 1))
        first = np.maximum.accumulate(np.where(split[:n] > 0, 0, np.arange(n)))
        segs = _Segments.of(n, lo, hi, groups)
        plo, phi = segs.positions(lo, hi)
        yh, yl = _two_sum(x, -x[first])
        p, e = _two_prod(yh, yh)
        if yl.any():
            e += 2 * yh * yl + yl * yl
        else:
            yl = None  # every shift was exact (the usual case): skip the extra terms
        sh, sl = _range_sums(segs.prefix_sums(yh, yl), plo, phi)
        qh, ql = _range_sums(segs.prefix_sums(p, e), plo, phi)
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
        # Ranges holding inf or NaN, or whose squares overflow: the segment tree, like the online fold.
        redo = np.flatnonzero(many & ~np.isfinite(var))
        if not finite.all():
            redo = np.union1d(redo, np.flatnonzero(_nonfinite_in(raw, lo, hi)))
        if len(redo):
            var[redo] = segs.tree_query(_VARIANCE, raw, lo[redo], hi[redo])
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


_VARIANCE = Variance("num")
"""The segment tree of :meth:`Variance.range_query`'s fallback computes variances (roots are taken after)."""
