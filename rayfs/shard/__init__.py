"""One shard of a store: the Ray-free state machine and the Ray actor that serves it.

The parts, each owning its own state (the core composes them; none reaches into another's):

* :mod:`rayfs.shard.core`: :class:`~rayfs.shard.core.ShardCore`, the state machine (recovery, ingest,
  fold, snapshots, definitions, online reads, replay); its module docstring states the shard's invariants;
* :mod:`rayfs.shard.windows`: :class:`~rayfs.shard.windows.WindowBuffers`, the window buffers and the
  windowed online reads;
* :mod:`rayfs.shard.replay_cache`: :class:`~rayfs.shard.replay_cache.ReplayCache`, the decoded events and
  sorted indexes of point-in-time replay;
* :mod:`rayfs.shard.online`: :class:`~rayfs.shard.online.OnlineView`, the online table kept equal to the
  state after every batch;
* :mod:`rayfs.shard.backfill`: :class:`~rayfs.shard.backfill.Backfill`, folding newly registered features
  from the log (cold start) and its progress;
* :mod:`rayfs.shard.inspect`: :class:`~rayfs.shard.inspect.Inspection`, stats, feature statistics, key
  samples and the audit;
* :mod:`rayfs.shard.actor`: :class:`~rayfs.shard.actor.ShardService`, the core as a Ray actor with its
  metrics (the only module here that imports Ray).

This package is internal and may change; drivers reach shards through :class:`rayfs.FeatureStore`.
"""

__all__: list[str] = []
