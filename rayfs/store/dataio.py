"""Ray Data in: ingest a ``ray.data.Dataset`` in parallel, without collecting it on the driver.

Each Ray Data worker connects to the store by its settings (:class:`~rayfs.store.session.Session`
pickles to them), owns its own write-ahead log under ``<store>/wal/`` and sends each block of rows through
the same :class:`~rayfs.store.ingest.Ingestor` a driver uses; only a row count per block comes back.
A worker empties its WAL after every acknowledged batch, so a finished ingest leaves nothing to replay.
Should a worker die mid-batch, its unacknowledged WAL is re-sent by the next process that opens the store.

Exactly once: a batch's id is the call's id (fresh per call) plus a hash of the batch's normalised content
(:func:`rayfs.engine.parts.content_digest`). Ray Data re-runs the task of a worker that died on the same
input rows, so the retry re-sends the same ids and the shards drop what they already applied. The price:
two batches of one call with identical content (every row equal, in the same order, e.g. ``ds.union(ds)``)
count once. A whole call cannot be made idempotent by an id (Ray Data forms batches in the order upstream
tasks finish, so a second run cuts the rows differently): ``batch_id`` is refused for datasets.
"""

from __future__ import annotations

import uuid

import pandas as pd

from rayfs.errors import DefinitionError, RayfsError
from rayfs.store.ingest import Ingestor
from rayfs.store.session import Session

__all__ = ["BATCH_ROWS", "ingest_dataset", "is_dataset"]

BATCH_ROWS = 100_000


class _Tally:
    """Rows and batches one call acknowledged so far, kept outside Ray Data so that an error that aborts
    the dataset can still say exactly what was applied."""

    def __init__(self) -> None:
        self.rows = self.batches = 0
        self.error: RayfsError | None = None

    def add(self, rows: int) -> None:
        self.rows += rows
        self.batches += 1

    def fail(self, error: RayfsError) -> None:
        self.error = self.error or error  # the first refusal aborts the dataset; later ones are echoes

    def get(self) -> tuple[int, int, RayfsError | None]:
        return self.rows, self.batches, self.error


class _Writer:
    """A Ray Data ``map_batches`` callable class: one Ingestor (and WAL) per worker."""

    def __init__(self, session: Session, stream: str, call_id: str, tally=None) -> None:
        self.ingestor = Ingestor(session)
        self.stream = stream
        self.call_id = call_id
        self.tally = tally

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        import ray

        if len(batch) == 0:
            return pd.DataFrame({"rows": pd.Series([], dtype="int64")})
        try:
            rows = self.ingestor.ingest(self.stream, batch, content_id=self.call_id)["rows"]
        except RayfsError as exc:  # Ray Data passes on only the text of an error: keep the error itself
            if self.tally is not None:
                ray.get(self.tally.fail.remote(exc))
            raise
        if self.tally is not None:
            ray.get(self.tally.add.remote(rows))  # one call per acknowledged batch (~100k rows)
        self.ingestor.wal.maybe_reset(force=True)
        return pd.DataFrame({"rows": [rows]})

    def __del__(self) -> None:
        try:
            self.ingestor.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def is_dataset(data) -> bool:
    """Whether ``data`` is a Ray Data dataset (told without importing Ray Data)."""
    return type(data).__module__.startswith("ray.data")


def ingest_dataset(session: Session, stream: str, ds, *, batch_id: str | None = None,
                   batch_rows: int = BATCH_ROWS, concurrency: int | None = None) -> dict:
    """Ingest every row of ``ds`` into ``stream``; returns ``{"rows": n, "batches": k}`` (``rows`` counts
    what the workers handed over, a retried task's duplicates dropped by the shards included).

    Raises:
        UnknownStreamError: ``stream`` is not registered.
        DefinitionError: a ``batch_id`` is given (see the module docstring).
    """
    session.catalog.stream(stream)
    if batch_id is not None:
        raise DefinitionError(f"ingest into {stream!r}: batch_id is not supported for a ray.data.Dataset "
                              "(Ray Data cuts batches differently on every run); a retried Ray Data task "
                              "is applied once without it")
    call_id = uuid.uuid4().hex
    workers = concurrency or max(1, min(len(session.handles), 4))
    import ray
    import ray.data

    tally = ray.remote(num_cpus=0)(_Tally).remote()
    try:
        counts = ds.map_batches(_Writer, fn_constructor_args=(session, stream, call_id, tally),
                                batch_size=batch_rows, batch_format="pandas",
                                compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=0)
        rows = batches = 0
        for block in counts.iter_batches(batch_format="pandas", batch_size=None):
            rows += int(block["rows"].sum())
            batches += len(block)
        return {"rows": rows, "batches": batches}
    except Exception:
        applied, whole, error = ray.get(tally.get.remote())
        if error is None:
            raise
        error.add_note(f"rayfs: a Ray Data worker refused a batch of up to {batch_rows:,} rows of this dataset "
                       f"(row numbers count within that batch); {applied:,} rows in {whole:,} whole batches had "
                       "been applied before the dataset was aborted (each batch is applied whole or not at "
                       "all, the refused one not at all): re-ingesting the same dataset would apply those again")
        raise error from None
    finally:
        ray.kill(tally)

