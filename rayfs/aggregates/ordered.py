"""Order-dependent aggregates: ``first`` and ``last``, the value of the earliest / latest event.

Events are ordered by ``(ts, seq)``: at equal event time the larger ingest sequence is later. The state
keeps the winning event's ``ts``, ``seq`` and value plus a ``has`` flag, so merging is commutative and
associative as long as ``(ts, seq)`` pairs are unique (``seq`` is unique per ingested event).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from rayfs.aggregates.base import Aggregate, State, optional_values, run_lengths, segments

__all__ = ["First", "Last"]

_I64 = np.iinfo(np.int64)


class _Ordered(Aggregate):
    """Shared implementation of ``first`` and ``last``. State: ts, seq, value, has."""

    kinds: ClassVar[frozenset[str]] = frozenset({"num", "str"})
    mixed_keys: ClassVar[bool] = True
    _latest: ClassVar[bool]

    def zero(self, n: int) -> State:
        value = np.zeros(n, dtype=np.float64) if self.kind == "num" else np.full(n, None, dtype=object)
        return {"ts": np.zeros(n, dtype=np.int64), "seq": np.zeros(n, dtype=np.int64), "value": value,
                "has": np.zeros(n, dtype=bool)}

    def _reduce(self, slots, values, ts, seq):
        if ts is None or seq is None:
            raise ValueError(f"aggregate {self.name!r} needs ts and seq")
        # Per slot, the event with the largest (smallest) (ts, seq), ties going to the later (earlier) row:
        # what a stable lexsort by (slot, ts, seq) puts last (first) in the slot's run, without that sort.
        order, starts, uniq = segments(slots)
        t, q = ts[order], seq[order]
        run = np.repeat(np.arange(len(starts)), run_lengths(starts, len(order)))
        pos = np.arange(len(order))
        best, none, worst = (np.maximum, -1, _I64.min) if self._latest else (np.minimum, len(order), _I64.max)
        cand = t == best.reduceat(t, starts)[run]
        cand &= q == best.reduceat(np.where(cand, q, worst), starts)[run]
        pick = order[best.reduceat(np.where(cand, pos, none), starts)]
        return uniq, {"ts": ts[pick], "seq": seq[pick], "value": values[pick],
                      "has": np.ones(len(pick), dtype=bool)}

    def merge(self, a: State, b: State) -> State:
        if self._latest:
            better = (b["ts"] > a["ts"]) | ((b["ts"] == a["ts"]) & (b["seq"] > a["seq"]))
        else:
            better = (b["ts"] < a["ts"]) | ((b["ts"] == a["ts"]) & (b["seq"] < a["seq"]))
        take_b = b["has"] & (~a["has"] | better)
        return {k: np.where(take_b, b[k], a[k]) for k in ("ts", "seq", "value", "has")}

    def finalize(self, state: State) -> np.ndarray:
        return optional_values(state["value"], state["has"], self.kind)

    def range_query(self, values, ts, seq, lo, hi, groups=None) -> np.ndarray:
        """The value at ``lo`` (first) or ``hi - 1`` (last): events are sorted by (slot, ts, seq)."""
        lo, hi, out, x, hit = self._range_start(values, ts, seq, lo, hi)
        if x is None:
            return out
        out[hit] = x[hi[hit] - 1] if self._latest else x[lo[hit]]
        return out


class First(_Ordered):
    """The value of the earliest event by (ts, seq); NaN (numbers) or None (strings) when empty.

    Example:
        >>> agg = First("str")
        >>> state = agg.zero(2)
        >>> agg.update(state, np.array([0, 0, 0]), np.array(["x", "y", "z"], dtype=object),
        ...            ts=np.array([5, 3, 3]), seq=np.array([0, 2, 1]))
        >>> agg.finalize(state)
        array(['z', None], dtype=object)
    """

    name: ClassVar[str] = "first"
    _latest: ClassVar[bool] = False


class Last(_Ordered):
    """The value of the latest event by (ts, seq); NaN (numbers) or None (strings) when empty.

    Example:
        >>> agg = Last("num")
        >>> state = agg.zero(2)
        >>> agg.update(state, np.array([1, 1, 1]), np.array([1.0, 2.0, 3.0]),
        ...            ts=np.array([7, 7, 2]), seq=np.array([4, 3, 9]))
        >>> agg.finalize(state)
        array([nan,  1.])
    """

    name: ClassVar[str] = "last"
    _latest: ClassVar[bool] = True
