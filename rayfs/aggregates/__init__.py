"""Pure, vectorised aggregates over vectors of states (numpy/pandas only; no ray, lmdb or msgpack).

:data:`REGISTRY` maps each aggregate's name to its class; :func:`make_aggregate` builds one for a value
kind (``"num"``, ``"str"`` or ``"none"``).

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
from rayfs.aggregates.ordered import First, Last
from rayfs.errors import AggregateError

REGISTRY: dict[str, type[Aggregate]] = {
    cls.name: cls
    for cls in (Count, Sum, Mean, Min, Max, Variance, Stddev, First, Last, CountDistinct)
}
"""Every aggregate class by name."""


def make_aggregate(name: str, kind: str) -> Aggregate:
    """The aggregate ``name`` for values of ``kind``.

    Args:
        name: a key of :data:`REGISTRY` (case-insensitive).
        kind: ``"num"``, ``"str"`` or ``"none"`` (rows, no column).

    Raises:
        AggregateError: an unknown name, or a kind the aggregate does not accept.
    """
    cls = REGISTRY.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise AggregateError(f"unknown aggregate {name!r}; supported: {', '.join(sorted(REGISTRY))}")
    return cls(kind)


__all__ = ["REGISTRY", "Aggregate", "AggregateError", "State", "make_aggregate"]
