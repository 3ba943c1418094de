"""Benchmark harness for rayfs: ``python -m bench`` (see :mod:`bench.__main__`).

rayfs versus DuckDB and pandas on the same seeded Reddit-upvotes workload; every run checks that all
answers agree before it reports any time.
"""
