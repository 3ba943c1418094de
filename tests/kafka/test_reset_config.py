"""Vanished offsets (the topic recreated under the subscription) stop a subscription with an error, or jump
as ``on_offset_reset`` says; subscriptions from a TOML config; ``rayfs status`` shows lag per partition."""

from __future__ import annotations

import numpy as np
import pytest

import rayfs
from rayfs.cli import main as cli

from .conftest import Producer, create_topic, delete_topic

STREAMS = ("strict", "lenient")


def open_store(path) -> rayfs.FeatureStore:
    store = rayfs.FeatureStore.open(path, shards=1)
    for s in STREAMS:
        store.register_stream(s, entities=["user"], timestamp="ts")
        store.register_feature(rayfs.Feature(name=f"n_{s}", stream=s, entity="user", agg="count"))
    return store


def produce(bootstrap: str, topic: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    prod = Producer(bootstrap, topic)
    for i in range(n):
        prod.send(0, {"user": "a" if rng.random() < 0.5 else "b", "ts": 1000.0 + i})
    prod.finish()


def test_topic_recreated_stops_or_resets(tmp_path, bootstrap, topic):
    create_topic(bootstrap, topic, 1)
    produce(bootstrap, topic, 100, 1)
    path = tmp_path / "s"
    with open_store(path) as store:
        store.subscribe("strict", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap))
        store.subscribe("lenient", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap,
                                                     on_offset_reset="earliest"))
        for s in STREAMS:
            store.wait_caught_up(s, timeout=60)
    delete_topic(bootstrap, topic)  # the store is closed: its consumers are stopped
    create_topic(bootstrap, topic, 1)
    produce(bootstrap, topic, 30, 2)
    with open_store(path) as store:
        with pytest.raises(rayfs.SourceError, match=rf"topic '{topic}' partition 0: offsets from 100 on are gone"):
            store.wait_caught_up("strict", timeout=60)
        store.wait_caught_up("lenient", timeout=60)
        subs = store.subscriptions().set_index("stream")
        assert subs.loc["strict", "state"] == "failed" and "on_offset_reset" in subs.loc["strict", "error"]
        assert subs.loc["lenient", "skipped"] == [(100, 0)] and subs.loc["lenient", "events"] == 130
        got = store.get_features("user", ["a", "b"], ["n_strict", "n_lenient"])
        assert got["n_strict"].sum() == 100 and got["n_lenient"].sum() == 130


CONFIG = """
[store]
path = "{path}"
shards = 1

[[streams]]
name = "ev"
entities = ["user"]
timestamp = "ts"

[streams.kafka]
topic = "{topic}"
bootstrap_servers = "{bootstrap}"
consumers = 1

[[features]]
name = "n"
stream = "ev"
entity = "user"
agg = "count"

[[observations]]
name = "lab"
keys = ["user"]

[observations.kafka]
topic = "{topic}-labels"
bootstrap_servers = "{bootstrap}"
"""


def test_config_subscribes_and_status_prints_lag(tmp_path, bootstrap, topic, capsys):
    create_topic(bootstrap, topic, 2)
    prod = Producer(bootstrap, topic)
    for i in range(50):
        prod.send(i % 2, {"user": f"u{i % 3}", "ts": 10.0 + i})
    prod.finish()
    create_topic(bootstrap, f"{topic}-labels", 1)
    prod = Producer(bootstrap, f"{topic}-labels")
    for i in range(3):  # labels after the events, at the events' end, and one before any event
        prod.send(0, {"user": f"u{i}", "ts": [100.0, 59.0, 5.0][i], "y": i})
    prod.finish()
    cfg = tmp_path / "store.toml"
    cfg.write_text(CONFIG.format(path=tmp_path / "s", topic=topic, bootstrap=bootstrap))
    with rayfs.FeatureStore.open(tmp_path / "s", shards=1) as store:
        assert store.apply(str(cfg))["subscriptions"] == ["ev", "lab"]
        store.wait_caught_up("ev", timeout=60)
        store.wait_caught_up("lab", timeout=60)
        assert store.get_features("user", ["u0", "u1", "u2"], "n")["n"].tolist() == [17, 17, 16]
        train = store.training_set("lab", ["n"]).sort_values("y")
        # u1's events are at 11, 14, ..., 56 (16 of them) and u1's label is at 59: all before it.
        assert train["user"].tolist() == ["u0", "u1", "u2"] and train["n"].tolist() == [17, 16, 0]
    assert cli(["status", "--path", str(tmp_path / "s")]) == 0  # reopens: the subscription resumes
    out = capsys.readouterr().out
    assert "Kafka subscriptions (3 partitions)" in out and f"{topic}-labels" in out and "lag" in out


def test_named_store_consumers_outlive_the_driver_and_restart_with_the_store(tmp_path, bootstrap, topic):
    create_topic(bootstrap, topic, 2)
    name = f"k{topic[2:]}"
    prod = Producer(bootstrap, topic)

    def send(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            prod.send(i % 2, {"user": f"u{i % 5}", "ts": 100.0 + i})
        prod.finish()

    send(0, 40)
    store = rayfs.FeatureStore.open(tmp_path / "s", shards=1, name=name)
    store.register_stream("ev", entities=["user"], timestamp="ts")
    store.register_feature(rayfs.Feature(name="n", stream="ev", entity="user", agg="count"))
    store.subscribe("ev", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap, consumers=2))
    pids = set(store.subscriptions()["pid"])
    store.close()  # a named store's consumers are detached: they keep consuming without this driver
    send(40, 70)
    other = rayfs.connect(name, address=None)
    try:
        other.wait_caught_up("ev", timeout=60)
        assert set(other.subscriptions()["pid"]) == pids
        assert other.get_features("user", ["u0"], "n")["n"].iloc[0] == 14
        other.stop()  # every actor of the store, consumers first
        send(70, 100)
        again = rayfs.FeatureStore.open(tmp_path / "s", name=name)  # the subscription restarts with the store
        try:
            again.wait_caught_up("ev", timeout=60)
            assert again.subscriptions()["events"].sum() == 100
            assert again.get_features("user", [f"u{i}" for i in range(5)], "n")["n"].tolist() == [20] * 5
        finally:
            again.stop()
    finally:
        other.close()
