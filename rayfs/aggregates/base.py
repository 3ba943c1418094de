"""The :class:`Aggregate` contract and the machinery every aggregate shares.

An aggregate works on a *vector of states*: a :data:`State` is a ``dict[str, np.ndarray]`` whose arrays all
have the same length ``n`` (one slot per entity or per query). Subclasses implement :meth:`Aggregate.zero`,
:meth:`Aggregate.reduce`, :meth:`Aggregate.merge` and :meth:`Aggregate.finalize` (and
:meth:`Aggregate.unmerge` when invertible); the base class derives ``update``, ``delete``, ``take``,
``put``, the wire format and a generic vectorised segment-tree ``range_query`` from them.

This module imports only numpy, pandas and the standard library.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from rayfs.errors import AggregateError

__all__ = ["EXPAND_LIMIT", "Aggregate", "KINDS", "State", "as_slots", "factorize_sorted", "objects", "optional_values",
           "run_lengths", "segments"]

State = dict[str, np.ndarray]
"""A vector of aggregate states: named arrays of one common length."""

KINDS = frozenset({"num", "str", "none"})
"""Every value kind: ``num`` (float64 values), ``str`` (object array of str), ``none`` (no column)."""

EXPAND_LIMIT = 1 << 22
"""The most event positions a range query expands at once (one ``np.repeat`` of its ranges): below it
``count_distinct`` expands every range, above it switches to its block algorithm; ``top_k`` answers its
ranges in chunks of at most this total length (one long range alone)."""


def as_slots(slots: Any) -> np.ndarray:
    """Return ``slots`` as a 1-d int64 array."""
    return np.asarray(slots, dtype=np.int64).reshape(-1)


def segments(slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group events by slot without a Python loop.

    Args:
        slots: the int64 slot of each event (any order, not empty).

    Returns:
        ``(order, starts, uniq)``: a stable permutation that sorts the events by slot, the start of each
        slot's run in that order, and the sorted unique slots.
    """
    n = len(slots)
    bits = max(n - 1, 1).bit_length()
    lo, hi = (int(slots.min()), int(slots.max())) if n else (0, 0)
    if n and (slots[1:] >= slots[:-1]).all():  # already grouped (e.g. read-time folds): no sort
        order = np.arange(n, dtype=np.int64)
        s = slots
    elif 0 <= lo and hi < (1 << (62 - bits)):
        # One sort of distinct int64 keys slot << bits | row (numpy's SIMD sort, several times faster than
        # a stable argsort); the row in the low bits makes it the stable order.
        keys = (slots.astype(np.int64, copy=False) << bits) | np.arange(n, dtype=np.int64)
        keys.sort()
        order = keys & ((1 << bits) - 1)
        s = keys >> bits
    else:
        order = np.argsort(slots, kind="stable")
        s = slots[order]
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    return order, starts, s[starts]


def run_lengths(starts: np.ndarray, n: int) -> np.ndarray:
    """The length of each run given the run starts and the total length ``n``."""
    return np.diff(np.append(starts, n)).astype(np.int64)


def factorize_sorted(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes and uniques of ``values`` with codes ordered like the values (for min/max of strings)."""
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), np.asarray(uniques, dtype=values.dtype)


def optional_values(values: np.ndarray, has: np.ndarray, kind: str) -> np.ndarray:
    """``values`` where ``has``, else the empty value of ``kind`` (NaN for numbers, None for strings)."""
    if kind == "num":
        return np.where(has, values, np.nan)
    out = values.copy()
    out[~has] = None
    return out


def _encode(arr: np.ndarray) -> Any:
    if arr.dtype == object:
        return arr.tolist()
    return {"dtype": arr.dtype.str, "data": np.ascontiguousarray(arr).tobytes()}


def _decode(wire: Any) -> np.ndarray:
    if isinstance(wire, dict):
        return np.frombuffer(wire["data"], dtype=np.dtype(wire["dtype"])).copy()
    out = np.empty(len(wire), dtype=object)
    out[:] = list(wire)
    return out


def objects(items: Any, n: int | None = None) -> np.ndarray:
    """A 1-d object array holding each of ``items`` as one element (lists and arrays are not unpacked)."""
    if n is None:
        items = list(items)
        n = len(items)
    return np.fromiter(items, dtype=object, count=n)


class Aggregate(ABC):
    """An aggregate over vectors of states; see the module docstring.

    Args:
        kind: the kind of the aggregated values: ``"num"``, ``"str"`` or ``"none"`` (rows, no column).
        **params: the aggregate's parameters, exactly the names declared in :attr:`params` (e.g. ``k=5``);
            each becomes an attribute of the instance. ``int`` parameters must be integers >= 1,
            ``float`` parameters finite real numbers; subclasses check their ranges in :meth:`_check`.

    Raises:
        AggregateError: the aggregate does not accept ``kind``, or a parameter is unknown, missing or bad.
    """

    name: ClassVar[str]
    kinds: ClassVar[frozenset[str]]
    needs_column: ClassVar[bool] = True
    invertible: ClassVar[bool] = False
    params: ClassVar[dict[str, type]] = {}
    """The parameters the constructor takes, by name, with their type (``int`` or ``float``)."""
    mixed_keys: ClassVar[bool] = False
    """Whether the aggregate accepts values of mixed Python types (an entity column holding both int and
    str keys, aggregated as objects)."""

    def __init__(self, kind: str, **params: Any):
        if kind not in self.kinds:
            raise AggregateError(f"aggregate {self.name!r} does not apply to values of kind {kind!r}; "
                                 f"it accepts: {', '.join(sorted(self.kinds))}")
        self.kind = kind
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            takes = f"takes {', '.join(sorted(self.params))}" if self.params else "takes no parameters"
            raise AggregateError(f"aggregate {self.name!r} {takes}; got {', '.join(unknown)}")
        self.options: dict[str, Any] = {}
        for p, typ in self.params.items():
            if p not in params or params[p] is None:
                raise AggregateError(f"aggregate {self.name!r} needs parameter {p}")
            v = params[p]
            if typ is int:
                if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                    raise AggregateError(f"aggregate {self.name!r}: {p} must be an integer >= 1, not {v!r}")
                v = int(v)
            else:
                if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating) \
                        or not np.isfinite(v):
                    raise AggregateError(f"aggregate {self.name!r}: {p} must be a finite number, not {v!r}")
                v = float(v)
            self.options[p] = v
            setattr(self, p, v)
        self._check()

    def _check(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Check the parameters' ranges (raise AggregateError); called at the end of ``__init__``."""

    def __repr__(self) -> str:
        extra = "".join(f", {p}={v!r}" for p, v in self.options.items())
        return f"{type(self).__name__}(kind={self.kind!r}{extra})"

    # ---------------------------------------------------------------- to implement

    @abstractmethod
    def zero(self, n: int) -> State:
        """``n`` empty states."""

    def reduce(self, slots: np.ndarray, values: np.ndarray | None, ts: np.ndarray | None,
               seq: np.ndarray | None) -> tuple[np.ndarray, State]:
        """Partial states of a batch of events, vectorised.

        Args:
            slots: the int64 slot of each event.
            values: the non-null values (``None`` for kind ``"none"``).
            ts: event times in µs (int64).
            seq: ingest sequence numbers (int64).

        Returns:
            The sorted unique slots and a State of the same length holding each slot's partial state.
        """
        slots, values, ts, seq = self._prepare(slots, values, ts, seq)
        if len(slots) == 0:
            return slots, self.zero(0)
        return self._reduce(slots, values, ts, seq)

    @abstractmethod
    def _reduce(self, slots: np.ndarray, values: np.ndarray | None, ts: np.ndarray | None,
                seq: np.ndarray | None) -> tuple[np.ndarray, State]:
        """:meth:`reduce` on normalised, non-empty input."""

    @abstractmethod
    def merge(self, a: State, b: State) -> State:
        """Elementwise combination of two equally long state vectors (commutative, associative)."""

    @abstractmethod
    def finalize(self, state: State) -> np.ndarray:
        """The aggregate's value for each state."""

    def unmerge(self, a: State, b: State) -> State:
        """The state ``c`` with ``merge(c, b) == a``; only for invertible aggregates.

        Raises:
            AggregateError: the aggregate is not invertible.
        """
        raise AggregateError(f"aggregate {self.name!r} is not invertible; events cannot be deleted")

    # ---------------------------------------------------------------- derived

    def _prepare(self, slots: Any, values: Any, ts: Any, seq: Any) -> tuple:
        slots = as_slots(slots)
        if values is not None:
            values = np.asarray(values, dtype=np.float64 if self.kind == "num" else object).reshape(-1)
            if self.kind == "num":
                values = values + 0.0  # -0.0 -> 0.0 so equal values are equal everywhere
            if len(values) != len(slots):
                raise ValueError(f"{len(values)} values for {len(slots)} slots")
        elif self.kind != "none":
            raise ValueError(f"aggregate {self.name!r} of kind {self.kind!r} needs values")
        ts = None if ts is None else np.asarray(ts, dtype=np.int64).reshape(-1)
        seq = None if seq is None else np.asarray(seq, dtype=np.int64).reshape(-1)
        for name, arr in (("ts", ts), ("seq", seq)):
            if arr is not None and len(arr) != len(slots):
                raise ValueError(f"{len(arr)} {name} for {len(slots)} slots")
        return slots, values, ts, seq

    def update(self, state: State, slots: np.ndarray, values: np.ndarray | None, ts: np.ndarray | None,
               seq: np.ndarray | None) -> None:
        """Fold a batch of events into ``state`` in place (``state[u] = merge(state[u], partial)``)."""
        if len(slots) == 0:
            return
        self.commit(state, *self.prepare(state, slots, values, ts, seq))

    def prepare(self, state: State, slots: np.ndarray, values: np.ndarray | None, ts: np.ndarray | None,
                seq: np.ndarray | None) -> tuple[np.ndarray, State]:
        """The first half of :meth:`update`, which changes nothing: every error surfaces here.

        Returns ``(uniq, new)``: the touched slots and their states after the update.
        """
        uniq, part = self.reduce(slots, values, ts, seq)
        return uniq, self.merge(self.take(state, uniq), part)

    def commit(self, state: State, uniq: np.ndarray, new: State) -> None:
        """The second half of :meth:`update`: store what :meth:`prepare` computed (cannot fail)."""
        self.put(state, uniq, new)

    def delete(self, state: State, slots: np.ndarray, values: np.ndarray | None, ts: np.ndarray | None,
               seq: np.ndarray | None) -> None:
        """Remove a batch of previously added events from ``state`` in place (inverse of :meth:`update`).

        Raises:
            AggregateError: the aggregate is not invertible.
        """
        if not self.invertible:
            raise AggregateError(f"aggregate {self.name!r} is not invertible; events cannot be deleted")
        if len(slots) == 0:
            return
        uniq, part = self.reduce(slots, values, ts, seq)
        self.put(state, uniq, self.unmerge(self.take(state, uniq), part))

    def take(self, state: State, idx: np.ndarray) -> State:
        """A copy of the states at ``idx``."""
        return {k: v[idx] for k, v in state.items()}

    def put(self, state: State, idx: np.ndarray, sub: State) -> None:
        """Overwrite the states at ``idx`` with ``sub`` in place."""
        for k, v in state.items():
            v[idx] = sub[k]

    def to_wire(self, state: State) -> dict:
        """``state`` as msgpack-able primitives.

        Numeric arrays become ``{"dtype": str, "data": bytes}``, object arrays lists.
        """
        return {k: _encode(v) for k, v in state.items()}

    def from_wire(self, wire: dict) -> State:
        """The inverse of :meth:`to_wire` (writable copies)."""
        return {k: _decode(v) for k, v in wire.items()}

    def range_query(self, values: np.ndarray | None, ts: np.ndarray | None, seq: np.ndarray | None,
                    lo: np.ndarray, hi: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """The finalized aggregate over ``values[lo[i]:hi[i]]`` for each query ``i``.

        The events are sorted by (entity slot, ts, seq) and a range never spans two entities. This generic
        version builds a segment tree from :meth:`zero`, :meth:`reduce` and :meth:`merge` (one leaf per
        event, padded to a power of two with zero states, built level by level) and answers every query at
        once bottom-up in about ``2 * log2(n)`` vectorised merge rounds.

        Args:
            values: the sorted events' values (``None`` for kind ``"none"``).
            ts: their event times.
            seq: their sequence numbers.
            lo: the first index of each query's range (inclusive).
            hi: the end of each query's range (exclusive); ``lo == hi`` is an empty range.
            groups: optionally the entity of each event (non-decreasing); a kernel may use it to go
                faster, the result never depends on it.

        Returns:
            One finalized value per query.
        """
        n = self._n_events(values, ts, seq)
        lo, hi = self._check_ranges(lo, hi, n)
        size = 1
        while size < n:
            size *= 2
        tree = self.zero(2 * size)
        if n:
            leaf_slots = np.arange(n, dtype=np.int64)
            _, leaves = self.reduce(leaf_slots, values, ts, seq)
            self.put(tree, leaf_slots + size, leaves)
            half = size // 2
            while half >= 1:
                idx = np.arange(half, 2 * half)
                self.put(tree, idx, self.merge(self.take(tree, 2 * idx), self.take(tree, 2 * idx + 1)))
                half //= 2
        q = len(lo)
        left, right = self.zero(q), self.zero(q)
        lp, rp = lo + size, hi + size
        while True:
            active = lp < rp
            if not active.any():
                break
            sel = np.flatnonzero(active & (lp & 1 == 1))
            if len(sel):
                self.put(left, sel, self.merge(self.take(left, sel), self.take(tree, lp[sel])))
                lp[sel] += 1
            sel = np.flatnonzero(active & (rp & 1 == 1))
            if len(sel):
                rp[sel] -= 1
                self.put(right, sel, self.merge(self.take(tree, rp[sel]), self.take(right, sel)))
            lp >>= 1
            rp >>= 1
        return self.finalize(self.merge(left, right))

    def _range_start(self, values: Any, ts: Any, seq: Any, lo: Any, hi: Any) -> tuple:
        """Common start of a range kernel: checked ranges, the output pre-filled with the empty value, the
        prepared values (``None`` when there are no events) and the indices of non-empty ranges."""
        n = self._n_events(values, ts, seq)
        lo, hi = self._check_ranges(lo, hi, n)
        out = self.finalize(self.zero(len(lo)))
        x = self._prepare(np.zeros(n, dtype=np.int64), values, None, None)[1] if n else None
        return lo, hi, out, x, np.flatnonzero(hi > lo)

    def _n_events(self, values: Any, ts: Any, seq: Any) -> int:
        for arr in (values, ts, seq):
            if arr is not None:
                return len(arr)
        raise ValueError(f"aggregate {self.name!r}: range_query needs values, ts or seq")

    @staticmethod
    def _check_ranges(lo: Any, hi: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.array(lo, dtype=np.int64).reshape(-1)
        hi = np.array(hi, dtype=np.int64).reshape(-1)
        if lo.shape != hi.shape:
            raise ValueError(f"{len(lo)} range starts for {len(hi)} range ends")
        if len(lo) and ((lo < 0).any() or (hi < lo).any() or (hi > n).any()):
            raise ValueError(f"ranges must satisfy 0 <= lo <= hi <= {n}")
        return lo, hi
