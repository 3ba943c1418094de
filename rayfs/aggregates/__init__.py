"""Pure, vectorised aggregates over vectors of states (numpy, pandas, datasketches; no ray, lmdb or msgpack).

:data:`REGISTRY` maps each aggregate's name to its class; :func:`make_aggregate` builds one for a value
kind (``"num"``, ``"str"`` or ``"none"``). This package is internal and may change: features name
their aggregate by string (``Feature(agg="mean")``).

Example:
    >>> agg = make_aggregate("mean", "num")
    >>> state = agg.zero(2)
    >>> agg.update(state, np.array([0, 1, 1]), np.array([1.0, 2.0, 4.0]), None, None)
    >>> agg.finalize(state)
    array([1., 3.])
"""

from __future__ import annotations

import numpy as np  # noqa: F401  (used by the doctest)

from rayfs.aggregates.base import Aggregate, State
from rayfs.aggregates.basic import Count, Max, Mean, Min, Stddev, Sum, Variance
from rayfs.aggregates.distinct import CountDistinct
from rayfs.aggregates.frequent import TopK
from rayfs.aggregates.ordered import First, Last
from rayfs.aggregates.ordered_k import FirstK, LastK
from rayfs.aggregates.sketches import ApproxCountDistinct, ApproxQuantile
from rayfs.errors import AggregateError

REGISTRY: dict[str, type[Aggregate]] = {
    cls.name: cls
    for cls in (Count, Sum, Mean, Min, Max, Variance, Stddev, First, Last, CountDistinct,
                LastK, FirstK, TopK, ApproxCountDistinct, ApproxQuantile)
}
"""Every aggregate class by name."""


def make_aggregate(name: str, kind: str, **params) -> Aggregate:
    """The aggregate ``name`` for values of ``kind``.

    Args:
        name: a key of :data:`REGISTRY` (case-insensitive).
        kind: ``"num"``, ``"str"`` or ``"none"`` (rows, no column).
        **params: the aggregate's parameters (its class's ``params``), e.g. ``k=5`` for ``last_k``.

    Raises:
        AggregateError: an unknown name, a kind the aggregate does not accept, or bad parameters.

    >>> make_aggregate("last_k", "str", k=3)
    LastK(kind='str', k=3)
    """
    cls = REGISTRY.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise AggregateError(f"unknown aggregate {name!r}; supported: {', '.join(sorted(REGISTRY))}")
    return cls(kind, **params)


__all__ = ["REGISTRY", "Aggregate", "AggregateError", "State", "make_aggregate"]
