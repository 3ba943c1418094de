"""Where events come from besides DataFrames: event files and Kafka topics.

:mod:`~rayfs.sources.files` reads Parquet, CSV and JSON-lines files batch by batch in constant memory (and
writes them back); :mod:`~rayfs.sources.consumer` holds the Kafka consumer actors of a subscription (the
only module here that imports Ray), :mod:`~rayfs.sources.decode` turns message batches into columns and
dead letters, and :mod:`~rayfs.sources.offsets` keeps a subscription's offsets log. This package is
internal and may change: :func:`rayfs.iter_batches`, :func:`rayfs.write_table` and
:class:`rayfs.KafkaSource` are the public names.
"""

__all__: list[str] = []
