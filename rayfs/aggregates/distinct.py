"""Exact distinct counting: ``count_distinct``.

The state of a slot is a dict value -> multiplicity, which makes the aggregate invertible (a delete
decrements and drops a value at zero). Range queries over sorted events use a numpy kernel instead of the
generic segment tree: with ``prev[i]`` the previous index holding the same value, the number of distinct
values in ``[lo, hi)`` is the number of ``i`` in that range with ``prev[i] < lo``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd

from rayfs.aggregates.base import EXPAND_LIMIT, Aggregate, State

__all__ = ["CountDistinct", "distinct_in_ranges", "previous_occurrence"]


def _dicts(items: list[dict]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def previous_occurrence(codes: np.ndarray) -> np.ndarray:
    """For each position the previous position holding the same code, -1 if none.

    Example:
        >>> previous_occurrence(np.array([0, 1, 0, 0, 1]))
        array([-1, -1,  0,  2,  1])
    """
    codes = np.asarray(codes, dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    prev = np.full(len(codes), -1, dtype=np.int64)
    if len(codes) > 1:
        same = codes[order[1:]] == codes[order[:-1]]
        prev[order[1:][same]] = order[:-1][same]
    return prev


def distinct_in_ranges(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                       expand_limit: int = EXPAND_LIMIT) -> np.ndarray:
    """The number of distinct codes in ``codes[lo[i]:hi[i]]`` for every ``i``, vectorised.

    Short total range length: expand every range (``np.repeat``) and count positions whose previous
    occurrence lies before the range start. Otherwise count ``C(hi, lo) - lo`` where
    ``C(h, l) = #{i < h : prev[i] < l}``, splitting each prefix ``[0, h)`` into its power-of-two blocks and
    counting every block with one ``searchsorted`` per level over block-sorted ``(block, prev)`` keys,
    which is ``O((n + q) log n)``.

    Args:
        codes: an integer code per event (equal values, equal codes).
        lo: range starts (inclusive).
        hi: range ends (exclusive), ``lo <= hi <= len(codes)``.
        expand_limit: the largest total range length answered by expansion.

    Returns:
        An int64 count per range.

    Example:
        >>> codes = np.array([3, 1, 3, 2, 1])
        >>> distinct_in_ranges(codes, np.array([0, 1, 2, 4]), np.array([5, 3, 2, 5]))
        array([3, 2, 0, 1])
        >>> distinct_in_ranges(codes, np.array([0, 1, 2, 4]), np.array([5, 3, 2, 5]), expand_limit=0)
        array([3, 2, 0, 1])
    """
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    n, q = len(codes), len(lo)
    prev = previous_occurrence(codes)
    lengths = hi - lo
    total = int(lengths.sum()) if q else 0
    if total <= expand_limit:
        qid = np.repeat(np.arange(q), lengths)
        starts = np.cumsum(lengths) - lengths
        idx = np.arange(total, dtype=np.int64) - np.repeat(starts - lo, lengths)
        fresh = prev[idx] < lo[qid]
        return np.bincount(qid, weights=fresh, minlength=q).astype(np.int64)
    width = n + 2  # prev + 1 lies in [0, n]
    pos = np.arange(n, dtype=np.int64)
    count = np.zeros(q, dtype=np.int64)
    k = 0
    while (1 << k) <= n:
        sel = np.flatnonzero((hi >> k) & 1)
        if len(sel):
            keys = np.sort((pos >> k) * width + (prev + 1))
            block = (hi[sel] >> k) - 1
            below = np.searchsorted(keys, block * width + lo[sel] + 1, side="left")
            count[sel] += below - (block << k)
        k += 1
    return count - lo


class CountDistinct(Aggregate):
    """The exact number of distinct values (numbers or strings); 0 when empty. Invertible.

    Example:
        >>> agg = CountDistinct("str")
        >>> state = agg.zero(2)
        >>> agg.update(state, np.array([0, 0, 0]), np.array(["a", "b", "a"], dtype=object), None, None)
        >>> agg.finalize(state)
        array([2, 0])
        >>> agg.delete(state, np.array([0]), np.array(["b"], dtype=object), None, None)
        >>> agg.finalize(state), state["d"][0]
        (array([1, 0]), {'a': 2})
    """

    name: ClassVar[str] = "count_distinct"
    kinds: ClassVar[frozenset[str]] = frozenset({"num", "str"})
    invertible: ClassVar[bool] = True
    mixed_keys: ClassVar[bool] = True

    def zero(self, n: int) -> State:
        return {"d": _dicts([{} for _ in range(n)])}

    def _reduce(self, slots, values, ts, seq):
        codes, uniques = pd.factorize(values)
        order = np.lexsort((codes, slots))
        s, c = slots[order], codes[order]
        new_pair = np.concatenate(([True], (s[1:] != s[:-1]) | (c[1:] != c[:-1])))
        pair_start = np.flatnonzero(new_pair)
        mult = np.diff(np.append(pair_start, len(s))).tolist()
        pair_slot = s[pair_start]
        keys = np.asarray(uniques, dtype=object)[c[pair_start]].tolist()
        slot_start = np.flatnonzero(np.concatenate(([True], pair_slot[1:] != pair_slot[:-1])))
        bounds = np.append(slot_start, len(pair_slot)).tolist()
        dicts = [dict(zip(keys[a:b], mult[a:b], strict=True))
                 for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return pair_slot[slot_start], {"d": _dicts(dicts)}

    def prepare(self, state: State, slots: np.ndarray, values, ts, seq) -> tuple:
        """The batch's distinct (slot, value) pairs with multiplicities, sorted by slot (consecutive pairs
        touch the same dict): :meth:`commit` adds them to the slots' dicts in place (no dict copies)."""
        slots, values, _, _ = self._prepare(slots, values, None, None)
        if len(slots) == 0:
            return np.zeros(0, dtype=np.int64), [], []
        codes, uniques = pd.factorize(values)
        width = np.int64(len(uniques))
        pairs, mult = np.unique(slots * width + codes, return_counts=True)
        keys = np.asarray(uniques, dtype=object)[pairs % width]
        return pairs // width, keys.tolist(), mult.tolist()

    def commit(self, state: State, pair_slots: np.ndarray, keys: list, mult: list) -> None:
        """Add the multiplicities of the distinct pairs ``(pair_slots[i], keys[i])`` to the slots' dicts
        (the dicts gathered in one numpy step; consecutive pairs share a dict, which keeps it in cache)."""
        for d, k, m in zip(state["d"][pair_slots].tolist(), keys, mult, strict=True):
            d[k] = d.get(k, 0) + m

    def merge(self, a: State, b: State) -> State:
        out = []
        for da, db in zip(a["d"], b["d"], strict=True):
            if len(da) < len(db):
                da, db = db, da
            c = dict(da)
            for k, m in db.items():
                c[k] = c.get(k, 0) + m
            out.append(c)
        return {"d": _dicts(out)}

    def unmerge(self, a: State, b: State) -> State:
        out = []
        for da, db in zip(a["d"], b["d"], strict=True):
            c = dict(da)
            for k, m in db.items():
                left = c.get(k, 0) - m
                if left > 0:
                    c[k] = left
                else:
                    c.pop(k, None)
            out.append(c)
        return {"d": _dicts(out)}

    def finalize(self, state: State) -> np.ndarray:
        d = state["d"]
        return np.fromiter(map(len, d), dtype=np.int64, count=len(d))

    def take(self, state: State, idx: np.ndarray) -> State:
        return {"d": _dicts([dict(x) for x in state["d"][idx]])}

    def to_wire(self, state: State) -> dict:
        return {"d": [[[k, m] for k, m in x.items()] for x in state["d"]]}

    def from_wire(self, wire: dict) -> State:
        return {"d": _dicts([{k: int(m) for k, m in pairs} for pairs in wire["d"]])}

    def range_query(self, values, ts, seq, lo, hi, groups=None) -> np.ndarray:
        """Distinct values per range with :func:`distinct_in_ranges` (no segment tree of dicts)."""
        n = self._n_events(values, ts, seq)
        lo, hi = self._check_ranges(lo, hi, n)
        if n == 0:
            return np.zeros(len(lo), dtype=np.int64)
        _, values, _, _ = self._prepare(np.zeros(n, dtype=np.int64), values, None, None)
        codes, uniques = pd.factorize(values)
        if groups is None:
            return distinct_in_ranges(codes, lo, hi)
        # Codes of (entity, value) pairs: a value's previous occurrence is then within its entity, and a
        # range starting at its entity's first event counts the first occurrences in it: prefix sums.
        groups = np.asarray(groups, dtype=np.int64)
        pairs, _ = pd.factorize(groups * np.int64(len(uniques) + 1) + codes)
        prev = previous_occurrence(pairs)
        firsts = np.concatenate(([0], np.cumsum(prev < 0)))
        run_start = np.searchsorted(groups, groups[np.minimum(lo, n - 1)], side="left")
        at_start = (lo == run_start) | (lo == hi)
        out = np.empty(len(lo), dtype=np.int64)
        out[at_start] = firsts[hi[at_start]] - firsts[lo[at_start]]
        rest = np.flatnonzero(~at_start)
        if len(rest):
            out[rest] = distinct_in_ranges(pairs, lo[rest], hi[rest])
        return out
