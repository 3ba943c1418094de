"""What a store is told: stream, feature and on-demand definitions, Kafka sources, the SQL and predicate
subsets, time parsing, configs.

Pure Python over numpy and pandas: nothing here starts Ray or touches a store's folder. The modules are
:mod:`~rayfs.model.definitions` (``Stream``, ``Feature``), :mod:`~rayfs.model.ondemand`
(``OnDemandFeature``), :mod:`~rayfs.model.kafka` (``KafkaSource``), :mod:`~rayfs.model.sql` (``SELECT``
statements to features), :mod:`~rayfs.model.predicate` (``WHERE`` clauses), :mod:`~rayfs.model.timeutil`
(timestamps and windows) and :mod:`~rayfs.model.config` (TOML store configs). This package is internal and
may change: the public names are exported from :mod:`rayfs`.
"""

__all__: list[str] = []
