"""Exact frequent values: ``top_k``, the ``k`` most frequent values with their counts.

The result of a slot is a Python list of ``{"value": v, "count": c}`` dicts (a fresh list per row), by
count descending, ties by value ascending (numbers before strings when an entity column mixes int and
str keys); ``[]`` when empty. Lists of dicts convert to Arrow/Parquet as ``list<struct<value, count>>``
for number and string values alike (a ``[value, count]`` pair would mix types inside one list).

The state is the exact multiset of values (a dict value -> multiplicity per slot, shared with
``count_distinct``), so ``top_k`` is exact, mergeable and invertible. Range queries over sorted events
count (range, value) pairs with one ``np.unique`` per chunk of ranges instead of building dicts.
"""

from __future__ import annotations

import heapq
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from rayfs.aggregates.base import EXPAND_LIMIT, State, objects
from rayfs.aggregates.distinct import CountDistinct

__all__ = ["TopK", "tie_key"]


def tie_key(v: Any) -> tuple:
    """The sort key ordering values ascending, numbers before strings (mixed int/str entity keys)."""
    return (isinstance(v, str), v)


def _entry(v: Any, c: int) -> dict:
    return {"value": v, "count": c}


class TopK(CountDistinct):
    """The ``k`` most frequent values as ``[{"value": v, "count": c}, ...]``, by count descending, ties by
    value ascending; ``[]`` when empty. Exact and invertible. State: a dict value -> count per slot.

    Example:
        >>> agg = TopK("str", k=2)
        >>> state = agg.zero(2)
        >>> agg.update(state, np.array([0, 0, 0, 0]), np.array(["b", "a", "c", "b"], dtype=object), None, None)
        >>> agg.finalize(state).tolist()
        [[{'value': 'b', 'count': 2}, {'value': 'a', 'count': 1}], []]
        >>> agg.delete(state, np.array([0]), np.array(["b"], dtype=object), None, None)
        >>> agg.finalize(state)[0]
        [{'value': 'a', 'count': 1}, {'value': 'b', 'count': 1}]
    """

    name: ClassVar[str] = "top_k"
    params: ClassVar[dict[str, type]] = {"k": int}
    mixed_keys: ClassVar[bool] = True
    k: int

    def _top(self, d: dict) -> list:
        if self.kind == "num":
            best = heapq.nsmallest(self.k, d.items(), key=lambda kv: (-kv[1], kv[0]))
        else:
            best = heapq.nsmallest(self.k, d.items(), key=lambda kv: (-kv[1], tie_key(kv[0])))
        return [_entry(v, c) for v, c in best]

    def finalize(self, state: State) -> np.ndarray:
        d = state["d"]
        return objects((self._top(x) for x in d), len(d))

    def range_query(self, values, ts, seq, lo, hi, groups=None) -> np.ndarray:
        """Counts of (range, value) pairs from ``np.unique`` over the expanded ranges, chunk by chunk."""
        n = self._n_events(values, ts, seq)
        lo, hi = self._check_ranges(lo, hi, n)
        q = len(lo)
        out = self.finalize(self.zero(q))
        if n == 0 or q == 0:
            return out
        _, x, _, _ = self._prepare(np.zeros(n, dtype=np.int64), values, None, None)
        codes, uniques = pd.factorize(x)
        uniques = np.asarray(uniques, dtype=x.dtype)
        # Re-code values by their tie order, so a smaller code is a smaller value.
        if self.kind == "num":
            by_value = np.argsort(uniques, kind="stable")
        else:
            by_value = np.array(sorted(range(len(uniques)), key=lambda i: tie_key(uniques[i])), dtype=np.int64)
        rank = np.empty(len(uniques), dtype=np.int64)
        rank[by_value] = np.arange(len(uniques))
        rcodes = rank[codes]
        sorted_values = uniques[by_value]
        width = np.int64(len(uniques))
        lengths = hi - lo
        ends = np.cumsum(lengths)
        a = 0
        while a < q:
            # the largest chunk [a, b) of ranges with total length <= EXPAND_LIMIT (at least one range)
            base = ends[a] - lengths[a]
            b = max(a + 1, int(np.searchsorted(ends, base + EXPAND_LIMIT, side="right")))
            self._answer(out, np.arange(a, b), lo[a:b], lengths[a:b], rcodes, sorted_values, width)
            a = b
        return out

    def _answer(self, out: np.ndarray, qs: np.ndarray, lo: np.ndarray, lengths: np.ndarray, rcodes: np.ndarray,
                sorted_values: np.ndarray, width: np.int64) -> None:
        total = int(lengths.sum())
        if total == 0:
            return
        qid = np.repeat(np.arange(len(qs), dtype=np.int64), lengths)
        start = np.cumsum(lengths) - lengths
        idx = np.arange(total, dtype=np.int64) - np.repeat(start - lo, lengths)
        pairs, counts = np.unique(qid * width + rcodes[idx], return_counts=True)
        pq, pv = pairs // width, pairs % width
        order = np.lexsort((pv, -counts, pq))  # per range: count descending, value ascending
        pq, pv, counts = pq[order], pv[order], counts[order]
        first = np.flatnonzero(np.concatenate(([True], pq[1:] != pq[:-1])))
        pos = np.arange(len(pq)) - np.repeat(first, np.diff(np.append(first, len(pq))))
        keep = pos < self.k
        pq, vals, counts = pq[keep], sorted_values[pv[keep]].tolist(), counts[keep].tolist()
        bounds = np.flatnonzero(np.concatenate(([True], pq[1:] != pq[:-1]))).tolist() + [len(pq)]
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            out[qs[pq[s]]] = [_entry(v, c) for v, c in zip(vals[s:e], counts[s:e], strict=True)]
