"""Entity key -> dense slot, per (stream, entity field) on one shard.

A shard keeps its per-entity state in arrays indexed by slot; :class:`KeyIndex` hands out those slots.

Invariants:

* a key's slot never changes once given, and slots are ``0, 1, 2, ...`` in order of first addition
  (so ``keys()[slot]`` is the key, and the list is all a snapshot needs to rebuild the index);
* every look-up path (a few keys through the dict, int64 keys through pandas' C hash table, other columns
  factorized, dictionary-encoded columns by code) gives the same slots and adds unknown keys in the same
  order, first appearance in the rows;
* null keys (``None``) have slot -1 and are never added; ``1`` and ``"1"`` are different keys.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pandas as pd

try:  # pandas' C hash table of int64 (vectorised look-ups); KeyIndex falls back to its dict without it
    from pandas._libs.hashtable import Int64HashTable
except ImportError:  # pragma: no cover - every supported pandas has it
    Int64HashTable = None

__all__ = ["SMALL_LOOKUP", "KeyIndex"]

SMALL_LOOKUP = 64  # key look-ups up to this many keys go through the dict, not pandas


class KeyIndex:
    """Dense integer slots for the entity keys of one (stream, entity field) on one shard.

    Keys are Python ``int`` or ``str``; ``1`` and ``"1"`` are different keys.

    >>> ki = KeyIndex()
    >>> ki.lookup(np.array(["a", None, "b", "a"], dtype=object), add=True).tolist()
    [0, -1, 1, 0]
    >>> ki.lookup(np.array([7, 1]), add=False).tolist()
    [-1, -1]
    """

    def __init__(self, keys: list | None = None) -> None:
        self._keys: list = list(keys or [])
        self._slot: dict = {k: i for i, k in enumerate(self._keys)}
        self._ints = None  # Int64HashTable: int key -> slot, built on the first int64 lookup

    def _int_table(self):
        """The vectorised index of the integer keys (pandas' C hash table), built once, then kept in sync."""
        if self._ints is None:
            self._ints = Int64HashTable(max(16, len(self._keys)))
            self._index_ints(self._keys, 0)
        return self._ints

    def _index_ints(self, keys: list, first_slot: int) -> None:
        """Add the integer ones of ``keys`` (slots ``first_slot``, ``first_slot + 1``, ...) to the int table."""
        if self._ints is None:
            return
        at = [i for i, k in enumerate(keys) if isinstance(k, int) and -(2**63) <= k < 2**63]
        if at:
            self._ints.map_keys_to_values(np.array([keys[i] for i in at], dtype=np.int64),
                                          np.array(at, dtype=np.int64) + first_slot)

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> list:
        return self._keys

    def lookup(self, keys: np.ndarray, *, add: bool | Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Slots of ``keys``: -1 for null keys, and for unknown keys unless added.

        Args:
            keys: int64 or object array of keys.
            add: ``True`` adds every unknown key; a function of an array of unknown keys returning a
                boolean mask adds the keys it selects (e.g. those this shard owns); ``False`` adds none.
        """
        if len(keys) == 0:
            return np.zeros(0, dtype=np.int64)
        if add is False and len(keys) <= SMALL_LOOKUP:
            # An online read of a few keys: dict look-ups beat factorizing (None, a null, is never a key).
            return np.array([self._slot.get(k, -1) for k in keys.tolist()], dtype=np.int64)
        if keys.dtype.kind in "iu" and Int64HashTable is not None:
            # int64 keys: one C pass over the rows; only the unknown ones are factorized and added.
            slots = self._int_table().lookup(keys.astype(np.int64, copy=False)).astype(np.int64, copy=False)
            miss = np.flatnonzero(slots < 0)
            if len(miss) and add is not False:
                codes, uniques = pd.factorize(keys[miss])
                uniques = np.asarray(uniques, dtype=np.int64)
                slots[miss] = self._table(uniques.tolist(), add, False, ints=uniques)[codes]
            return slots
        codes, uniques = pd.factorize(pd.Series(keys, dtype=keys.dtype), use_na_sentinel=True)
        table = self._table(uniques.tolist(), add, keys.dtype == object)
        return table[codes]

    def lookup_encoded(self, uniques: list, codes: np.ndarray, *,
                       add: bool | Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """:meth:`lookup` of a dictionary-encoded key column (``uniques[codes]``, code -1 = null) without
        decoding it: one dict look-up per distinct key present, then a gather by code.

        Equal to ``lookup(decoded column)``, including the order in which new keys get their slots (first
        appearance in the rows); ``uniques`` may hold keys no row uses (they are not added).

        >>> ki = KeyIndex()
        >>> ki.lookup_encoded(["x", "a", "b"], np.array([1, -1, 2, 1], dtype=np.int32), add=True).tolist()
        [0, -1, 1, 0]
        >>> ki.keys()
        ['a', 'b']
        """
        if len(codes) == 0:
            return np.zeros(0, dtype=np.int64)
        local, used = pd.factorize(np.asarray(codes))  # the codes present, in order of first appearance
        used = np.asarray(used, dtype=np.int64)
        present = used >= 0
        pool = np.empty(len(uniques), dtype=object)
        pool[:] = uniques
        table = np.full(len(used) + 1, -1, dtype=np.int64)  # the trailing -1: no row maps there
        if present.all():
            table[:-1] = self._table(pool[used].tolist(), add, True)[:-1]
        else:
            table[np.flatnonzero(present)] = self._table(pool[used[present]].tolist(), add, True)[:-1]
        return table[local]

    def _table(self, uniq: list, add: bool | Callable[[np.ndarray], np.ndarray], objects: bool,
               ints: np.ndarray | None = None) -> np.ndarray:
        """Slots of the distinct non-null keys ``uniq`` plus a trailing -1 (the slot of a null code),
        adding unknown keys per ``add`` (see :meth:`lookup`) in the order of ``uniq``.

        ``ints``: ``uniq`` as an int64 array, all of them known to be unknown (the int64 path of
        :meth:`lookup`, which looked them up in the int table already).
        """
        table = np.empty(len(uniq) + 1, dtype=np.int64)
        if ints is None:
            table[:-1] = np.fromiter(map(self._slot.get, uniq, itertools.repeat(-1)), dtype=np.int64,
                                     count=len(uniq))
        else:
            table[:-1] = -1
        table[-1] = -1
        unknown = np.flatnonzero(table[:-1] < 0)
        if len(unknown) and add is not False:
            if add is not True:
                if ints is not None:
                    arr = ints[unknown]
                else:
                    arr = np.empty(len(unknown), dtype=object)
                    arr[:] = [uniq[i] for i in unknown.tolist()]
                    arr = arr if objects else arr.astype(np.int64)
                unknown = unknown[add(arr)]
            first = len(self._keys)
            added = [uniq[i] for i in unknown.tolist()]
            table[unknown] = np.arange(first, first + len(added))
            self._slot.update(zip(added, range(first, first + len(added)), strict=True))
            self._keys.extend(added)
            if ints is None:
                self._index_ints(added, first)
            elif len(unknown):
                self._ints.map_keys_to_values(ints[unknown], table[unknown])
        return table
