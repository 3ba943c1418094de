"""Ray-free computation over event columns: normalising batches, folding them into aggregate states, routing
keys to shards and joining observations point in time.

:mod:`~rayfs.engine.columns` (batch columns and their wire form), :mod:`~rayfs.engine.fold` (compiled
features and their states), :mod:`~rayfs.engine.pit` (point-in-time event indexes),
:mod:`~rayfs.engine.routing` (key hashing and shard placement) and :mod:`~rayfs.engine.featurestats`
(feature statistics). Shards and the driver both build on it. This package is internal and may change:
the public names are exported from :mod:`rayfs`.
"""
