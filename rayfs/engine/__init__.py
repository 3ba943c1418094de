"""Ray-free computation over event columns: normalising batches, routing them to shards, folding them into
aggregate states and joining observations point in time.

:mod:`~rayfs.engine.columns` (batch columns and their wire form), :mod:`~rayfs.engine.parts` (a batch
validated and cut into one part per shard, the record both sides share), :mod:`~rayfs.engine.routing` (key
hashing and shard placement), :mod:`~rayfs.engine.keyindex` (entity keys to dense slots),
:mod:`~rayfs.engine.fold` (compiled features and their states), :mod:`~rayfs.engine.pit` (point-in-time
event indexes) and :mod:`~rayfs.engine.featurestats` (feature statistics). Shards and the driver both
build on it. This package is internal and may change: the public names are exported from :mod:`rayfs`.
"""

__all__: list[str] = []
