"""The shard as a Ray actor: a thin wrapper that puts :class:`~rayfs.shardcore.ShardCore` on Ray.

Shards ask for no CPU (``num_cpus=0``) so that any number of them can be placed on a small machine (an
actor asking for a CPU waits forever once the CPUs are taken). A shard that dies is restarted by Ray and
rebuilds its state from its snapshot and log in ``__init__``; a retried ingest is idempotent because
batches carry ids.
"""

from __future__ import annotations

import ray

from rayfs.shardcore import ShardCore

ShardActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, max_concurrency=8)(ShardCore)


def actor_name(store_id: str, shard_id: int) -> str:
    """The Ray actor name of one shard of a store."""
    return f"rayfs:{store_id}:shard-{shard_id:03d}"
