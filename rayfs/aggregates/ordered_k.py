"""Order-dependent list aggregates: ``last_k`` and ``first_k``, the values of the newest / oldest ``k`` events.

Events are ordered by ``(ts, seq)`` exactly like ``first`` and ``last``: at equal event time the larger
ingest sequence is later. Results are Python lists (one fresh list per row): ``last_k`` lists the values
newest first, ``first_k`` oldest first; an entity without events gets ``[]``.

State: one object array ``items`` whose element per slot is a small structured numpy array
``(ts, seq, v)`` of at most ``k`` events sorted by ``(ts, seq)`` ascending (never modified in place: a
new array replaces it, so states may share them). Merging concatenates the slots' events, sorts them by
(slot, ts, seq) once for all slots and keeps the newest (oldest) ``k`` of each slot, so it is commutative
and associative as long as ``(ts, seq)`` pairs are unique. Range queries over sorted events are slices.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from rayfs.aggregates.base import Aggregate, State, _decode, _encode, objects

__all__ = ["FirstK", "LastK"]


class _OrderedK(Aggregate):
    """Shared implementation of ``last_k`` and ``first_k``. State: ``items`` (see the module docstring)."""

    kinds: ClassVar[frozenset[str]] = frozenset({"num", "str"})
    params: ClassVar[dict[str, type]] = {"k": int}
    mixed_keys: ClassVar[bool] = True
    _latest: ClassVar[bool]
    k: int

    def __init__(self, kind: str, **params) -> None:
        super().__init__(kind, **params)
        self._dtype = np.dtype([("ts", np.int64), ("seq", np.int64),
                                ("v", np.float64 if kind == "num" else object)])
        self._empty = np.zeros(0, dtype=self._dtype)
        self._empty.flags.writeable = False

    # ---------------------------------------------------------------- helpers

    def _events(self, values: np.ndarray, ts: np.ndarray, seq: np.ndarray) -> np.ndarray:
        ev = np.empty(len(values), dtype=self._dtype)
        ev["ts"], ev["seq"], ev["v"] = ts, seq, values
        return ev

    def _flat(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The events of every slot of ``items`` concatenated, and each slot's count."""
        lens = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
        flat = self._cat(list(items)) if lens.sum() else self._empty
        return flat, lens

    def _cat(self, arrays: list) -> np.ndarray:
        # An explicit dtype skips numpy's per-array field promotion (several times faster).
        return np.concatenate(arrays, dtype=self._dtype, casting="no")

    def _split(self, flat: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """An ``items`` array from concatenated events and per-slot counts (each slot's own copy)."""
        ends = np.cumsum(lens).tolist()
        empty = self._empty
        return objects((flat[e - m:e].copy() if m else empty for e, m in zip(ends, lens.tolist(), strict=True)),
                       len(lens))

    def _combine(self, sid: np.ndarray, ev: np.ndarray, n: int) -> np.ndarray:
        """Per slot ``0..n-1`` the newest (oldest) ``k`` of the events ``ev`` of slot ``sid``."""
        order = np.lexsort((ev["seq"], ev["ts"], sid))
        counts = np.bincount(sid, minlength=n).astype(np.int64)
        s = sid[order]
        pos = np.arange(len(order), dtype=np.int64) - (np.cumsum(counts) - counts)[s]
        keep = pos >= (counts - self.k)[s] if self._latest else pos < self.k
        return self._split(ev[order[keep]], np.minimum(counts, self.k))

    # ---------------------------------------------------------------- contract

    def zero(self, n: int) -> State:
        items = np.empty(n, dtype=object)
        items.fill(self._empty)
        return {"items": items}

    def _reduce(self, slots, values, ts, seq):
        if ts is None or seq is None:
            raise ValueError(f"aggregate {self.name!r} needs ts and seq")
        uniq, inv = np.unique(slots, return_inverse=True)
        return uniq, {"items": self._combine(inv.reshape(-1), self._events(values, ts, seq), len(uniq))}

    def prepare(self, state: State, slots, values, ts, seq) -> tuple[np.ndarray, State]:
        """One sort of the touched slots' kept events together with the batch (no separate reduce)."""
        slots, values, ts, seq = self._prepare(slots, values, ts, seq)
        if len(slots) == 0:
            return slots, self.zero(0)
        if ts is None or seq is None:
            raise ValueError(f"aggregate {self.name!r} needs ts and seq")
        uniq, inv = np.unique(slots, return_inverse=True)
        old, lens = self._flat(state["items"][uniq])
        sid = np.concatenate((np.repeat(np.arange(len(uniq), dtype=np.int64), lens), inv.reshape(-1)))
        ev = self._cat([old, self._events(values, ts, seq)])
        return uniq, {"items": self._combine(sid, ev, len(uniq))}

    def merge(self, a: State, b: State) -> State:
        n = len(a["items"])
        fa, la = self._flat(a["items"])
        fb, lb = self._flat(b["items"])
        slots = np.arange(n, dtype=np.int64)
        sid = np.concatenate((np.repeat(slots, la), np.repeat(slots, lb)))
        return {"items": self._combine(sid, self._cat([fa, fb]), n)}

    def finalize(self, state: State) -> np.ndarray:
        items = state["items"]
        if self._latest:
            return objects((x["v"][::-1].tolist() for x in items), len(items))
        return objects((x["v"].tolist() for x in items), len(items))

    def to_wire(self, state: State) -> dict:
        """Flat: per-slot counts, then every slot's ts, seq and values concatenated."""
        flat, lens = self._flat(state["items"])
        return {"n": _encode(lens), "ts": _encode(flat["ts"]), "seq": _encode(flat["seq"]),
                "v": _encode(np.ascontiguousarray(flat["v"]))}

    def from_wire(self, wire: dict) -> State:
        lens = _decode(wire["n"])
        v = _decode(wire["v"])
        flat = np.empty(len(v), dtype=self._dtype)
        flat["ts"], flat["seq"], flat["v"] = _decode(wire["ts"]), _decode(wire["seq"]), v
        return {"items": self._split(flat, lens)}

    def range_query(self, values, ts, seq, lo, hi, groups=None) -> np.ndarray:
        """The last (first) ``k`` values of each range's slice: events are sorted by (slot, ts, seq)."""
        lo, hi, out, x, hit = self._range_start(values, ts, seq, lo, hi)
        if x is None:
            return out
        m = np.minimum(hi - lo, self.k)
        total = int(m.sum())
        start = np.cumsum(m) - m
        off = np.arange(total, dtype=np.int64) - np.repeat(start, m)
        idx = np.repeat(hi - 1, m) - off if self._latest else np.repeat(lo, m) + off
        flat = x[idx].tolist()
        bounds = np.append(start, total).tolist()
        return objects((flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)), len(lo))


class LastK(_OrderedK):
    """The values of the latest ``k`` events by (ts, seq), newest first; ``[]`` when empty.

    Example:
        >>> agg = LastK("num", k=2)
        >>> state = agg.zero(2)
        >>> agg.update(state, np.array([0, 0, 0]), np.array([1.0, 2.0, 3.0]),
        ...            ts=np.array([5, 9, 5]), seq=np.array([0, 1, 2]))
        >>> agg.finalize(state).tolist()
        [[2.0, 3.0], []]
    """

    name: ClassVar[str] = "last_k"
    _latest: ClassVar[bool] = True


class FirstK(_OrderedK):
    """The values of the earliest ``k`` events by (ts, seq), oldest first; ``[]`` when empty.

    Example:
        >>> agg = FirstK("str", k=2)
        >>> state = agg.zero(2)
        >>> agg.update(state, np.array([1, 1, 1]), np.array(["x", "y", "z"], dtype=object),
        ...            ts=np.array([5, 3, 3]), seq=np.array([0, 2, 1]))
        >>> agg.finalize(state).tolist()
        [[], ['z', 'y']]
    """

    name: ClassVar[str] = "first_k"
    _latest: ClassVar[bool] = False
