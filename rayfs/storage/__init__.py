"""What a store keeps on disk: segmented event logs, LMDB snapshots, the online table, the driver's
write-ahead log, the catalog of definitions, observation streams, file locks and group commit.

Ray-free; each module owns one file format (its module docstring describes it). This package is internal
and may change: the public names are exported from :mod:`rayfs`.
"""

__all__: list[str] = []
