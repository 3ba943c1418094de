"""Where events come from besides DataFrames: Parquet, CSV and JSON-lines files read batch by batch in
constant memory (:mod:`~rayfs.sources.files`), and written back.

This package is internal and may change: :func:`rayfs.iter_batches` and :func:`rayfs.write_table` are the
public names.
"""
