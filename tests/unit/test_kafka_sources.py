"""Kafka sources without Ray or a broker: KafkaSource validation, decoding and dead letters, the offsets log,
and the ``[streams.kafka]`` config table."""

from __future__ import annotations

import json
import os

import msgpack
import numpy as np
import pandas as pd
import pytest

import rayfs
from rayfs.engine import columns as C
from rayfs.model.config import ConfigError, dump_config, parse_config
from rayfs.model.definitions import Stream
from rayfs.model.kafka import KafkaSource
from rayfs.sources.decode import decode, locate_bad
from rayfs.sources.offsets import COMPACT_RECORDS, OffsetsLog, load_subscriptions, save_subscriptions

S = Stream(name="ev", entities=("user",), timestamp="ts")


def j(obj) -> bytes:
    return json.dumps(obj).encode()


# ------------------------------------------------------------------------------------------- KafkaSource
def test_source_defaults_round_trip_and_lazy_export():
    src = rayfs.KafkaSource(topic="up.votes_1", bootstrap_servers="b:9092", consumer_config={"client.id": "x"})
    assert src.format == "json" and src.start == "earliest" and src.max_batch_rows == 100_000
    assert src.max_delay == 0.05 and src.consumers == 1 and src.on_offset_reset is None
    assert src.catch_up == 100_000
    assert KafkaSource.from_dict(src.to_dict()) == src
    assert src.client_config()["bootstrap.servers"] == "b:9092" and src.client_config()["client.id"] == "x"
    assert "KafkaSource" in rayfs.__all__ and "SourceError" in rayfs.__all__


@pytest.mark.parametrize(("kw", "match"), [
    ({"topic": ""}, "topic must be"),
    ({"topic": "a b"}, "topic must be"),
    ({"bootstrap_servers": " "}, "bootstrap_servers"),
    ({"format": "avro"}, "format must be one of"),
    ({"start": "middle"}, "start must be one of"),
    ({"timestamp": "event"}, "timestamp must be one of"),
    ({"on_offset_reset": "none"}, "on_offset_reset must be one of"),
    ({"consumers": 0}, "consumers must be"),
    ({"consumers": True}, "consumers must be"),
    ({"max_batch_rows": 1 << 25}, "max_batch_rows must be"),
    ({"max_delay": 0}, "max_delay must be"),
    ({"catch_up": -1}, "catch_up must be"),
    ({"catch_up": 1.5}, "catch_up must be"),
    ({"consumer_config": {"group.id": "g"}}, "may not set 'group.id'"),
    ({"consumer_config": {"x": [1]}}, "consumer_config\\['x'\\]"),
    ({"consumer_config": "a=b"}, "consumer_config must be a mapping"),
])
def test_source_rejects_bad_values_naming_the_field(kw, match):
    args = {"topic": "t", "bootstrap_servers": "b:9092", **kw}
    with pytest.raises(rayfs.SourceError, match=match):
        KafkaSource(**args)


def test_source_from_dict_rejects_unknown_fields():
    with pytest.raises(rayfs.SourceError, match="unknown field.*'topik'"):
        KafkaSource.from_dict({"topik": "t", "bootstrap_servers": "b"})


# ------------------------------------------------------------------------------------------- decoding
def test_json_batch_decodes_vectorised_and_normalises_like_ingest():
    vals = [j({"user": f"u{i % 5}", "ts": 1.7e9 + i, "x": i, "tag": "a" if i % 2 else "b"}) for i in range(1000)]
    d = decode(vals, "json", S, {})
    assert d.dead == [] and list(d.rows) == list(range(1000))
    assert d.frame["user"].tolist()[:3] == ["u0", "u1", "u2"] and len(d.frame) == 1000
    cols = {c: C.value_column(d.frame[c], what=c) for c in ("x", "tag")}
    assert cols["x"].tolist()[:3] == [0, 1, 2] and cols["tag"][:2].tolist() == ["b", "a"]
    assert C.timestamps(d.frame["ts"], what="ts")[0] == 1_700_000_000_000_000


def test_every_kind_of_bad_message_is_a_dead_letter_and_the_rest_is_kept():
    good = [j({"user": "a", "ts": 10.0, "x": 1.5}), j({"user": 7, "ts": 11, "x": 2})]
    bad = {
        2: (b"{oops", "not valid JSON"),
        3: (b'"a string"', "not a JSON object"),
        4: (None, "tombstone"),
        5: (j({"ts": 1, "x": 1}), "lacks entity 'user'"),
        6: (j({"user": None, "ts": 1}), "lacks entity 'user'"),
        7: (j({"user": 1.5, "ts": 1}), "entity 'user' must be a string or an integer"),
        8: (j({"user": True, "ts": 1}), "entity 'user' must be a string or an integer"),
        9: (j({"user": "a", "x": 1}), "lacks timestamp 'ts'"),
        10: (j({"user": "a", "ts": "yesterday"}), "timestamp 'ts' is not"),
        11: (j({"user": "a", "ts": 1, "x": "text"}), "column 'x' holds numbers"),
        12: (j({"user": "a", "ts": 1, "x": [1, 2]}), "nested"),
        13: (j({"user": "a", "ts": 1, "__x": 1}), "bad column name"),
    }
    vals = good + [bad[i][0] for i in sorted(bad)] + [j({"user": "b", "ts": 12.0, "x": None})]
    d = decode(vals, "json", S, {})
    assert list(d.rows) == [0, 1, len(vals) - 1]
    assert [i for i, _ in d.dead] == sorted(bad)
    for i, why in d.dead:
        assert bad[i][1] in why, (i, why)
    assert d.frame["user"].tolist() == ["a", 7, "b"]
    assert np.isnan(d.frame["x"].iloc[2]) and d.frame["x"].iloc[0] == 1.5


def test_schema_kind_decides_and_iso_times_are_read():
    vals = [j({"user": "a", "ts": "2024-01-01T00:00:01Z", "x": "s"}), j({"user": "b", "ts": "2024-01-01T00:00:02Z",
                                                                         "x": 3})]
    d = decode(vals, "json", S, {"x": "num"})  # the store already holds numbers in x
    assert list(d.rows) == [1] and "holds numbers" in d.dead[0][1]
    assert C.timestamps(d.frame["ts"], what="ts").tolist() == [1_704_067_202_000_000]
    d = decode(vals, "json", S, {})  # no kind yet, as many strings as numbers: the first value decides
    assert list(d.rows) == [0] and "holds strings" in d.dead[0][1]


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_without_a_recorded_kind_most_values_decide_and_only_the_others_are_dead(fmt):
    pack = j if fmt == "json" else msgpack.packb
    vals = [pack({"user": "a", "ts": 1, "amount": "4"}), pack({"user": "a", "ts": 2, "amount": 5}),
            pack({"user": "b", "ts": 3, "amount": 6.5}), pack({"user": "b", "ts": 4})]
    d = decode(vals, fmt, S, {})
    assert [i for i, _ in d.dead] == [0] and "column 'amount' holds numbers" in d.dead[0][1]
    assert list(d.rows) == [1, 2, 3] and d.frame["amount"].tolist()[:2] == [5.0, 6.5]
    d = decode(vals, fmt, S, {"amount": "str"})  # a kind the stream holds wins over the batch's majority
    assert [i for i, _ in d.dead] == [1, 2] and d.frame["amount"].tolist()[0] == "4"
    d = decode(vals, fmt, S, {}, mixed=["amount"])  # a key column: numbers and strings may mix
    assert d.dead == [] and d.frame["amount"].tolist()[:3] == ["4", 5, 6.5]


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_integer_values_keep_the_dtype_a_list_of_dicts_gives(tmp_path, fmt):
    """Decoded labels and the same labels appended directly are stored alike: integers as int64 (floats
    once a value is null or fractional), whichever decoding path (Arrow, value by value, msgpack) ran."""
    from rayfs.storage.observations import ObservationStreams

    cases = {"ints": [1, 0, 1], "ints_and_null": [1, None, 0], "floats": [1, 2.5, 0], "bools": [True, False, True]}
    for name, labels in cases.items():
        rows = [{"user": f"u{i}", "ts": 1.0 + i, "label": v} for i, v in enumerate(labels)]
        pack = j if fmt == "json" else msgpack.packb
        for extra in ([], [b"{not json" if fmt == "json" else b"\xc1"]):  # the fast path, then value by value
            d = decode([pack(r) for r in rows] + extra, fmt, S, {})
            direct = ObservationStreams(str(tmp_path / f"{name}-{len(extra)}"), "none")
            direct.append("a", rows, keys={"user"})
            direct.append("b", d.frame, keys={"user"})
            want, got = direct.read("a")["label"], direct.read("b")["label"]
            assert got.dtype == want.dtype, (name, extra, got.dtype, want.dtype)
            assert got.tolist() == want.tolist() or (name == "ints_and_null" and got.isna().tolist() == [
                False, True, False])
            direct.close()
    assert decode([j({"user": "a", "ts": 1, "n": 2**70})], "json", S, {}).frame["n"].dtype == np.float64


def test_iso_times_and_date_like_strings_through_arrows_reader_stay_what_they_are():
    """Arrow's JSON reader takes strings shaped like ISO-8601 times for timestamps: event times are still
    read (whole seconds, offsets), and a string label that looks like a date stays that string."""
    vals = [j({"user": "a", "ts": t, "day": "2024-01-02"})
            for t in ("2023-11-14T22:13:20Z", "2023-11-14T23:13:21+01:00", "2023-11-14 22:13:22")]
    d = decode(vals, "json", S, {})
    assert d.dead == [] and d.frame["day"].tolist() == ["2024-01-02"] * 3
    assert C.timestamps(d.frame["ts"], what="ts").tolist() == [1_700_000_000_000_000 + i * 10**6 for i in range(3)]


def test_epoch_seconds_and_iso_times_share_a_batch():
    vals = [j({"user": "a", "ts": 1_700_000_000}), j({"user": "a", "ts": "2023-11-14T22:13:21.25Z"}),
            j({"user": "a", "ts": "2023-11-14T23:13:22+01:00"}), j({"user": "a", "ts": "yesterday"}),
            j({"user": "a", "ts": 1_700_000_003.5})]
    want = [1_700_000_000_000_000, 1_700_000_001_250_000, 1_700_000_002_000_000, None, 1_700_000_003_500_000]
    d = decode(vals, "json", S, {})
    assert [i for i, _ in d.dead] == [3] and "timestamp 'ts' is not" in d.dead[0][1]
    assert C.timestamps(d.frame["ts"], what="ts").tolist() == [w for w in want if w is not None]
    d = decode([vals[1], vals[2], vals[0]], "json", S, {})  # strings first: each value still read on its own
    assert d.dead == [] and C.timestamps(d.frame["ts"], what="ts").tolist() == [want[1], want[2], want[0]]
    for v, w in zip(vals, want, strict=True):  # alone, each message decodes the same
        d = decode([v], "json", S, {})
        assert (C.timestamps(d.frame["ts"], what="ts").tolist() == [w]) if w else len(d.dead) == 1


def test_a_column_features_read_is_null_when_every_message_lacks_it():
    d = decode([j({"user": "a", "ts": 1}), j({"user": "b", "ts": 2})], "json", S, {"x": "num"}, required=["x"])
    assert d.dead == [] and np.isnan(d.frame["x"]).all()
    cols = C.conform(C.value_column(d.frame["x"], what="x"), "str")
    assert cols.tolist() == [None, None]


def test_kafka_timestamps_replace_the_event_time():
    vals = [j({"user": "a", "x": 1}), j({"user": "b", "ts": 99, "x": 2})]
    d = decode(vals, "json", S, {}, kafka_ts=np.array([1000, 2500]))
    assert C.timestamps(d.frame["ts"], what="ts").tolist() == [1_000_000, 2_500_000]


def test_msgpack_one_unpacker_and_per_message_fallback():
    vals = [msgpack.packb({"user": f"u{i}", "ts": 1.0 + i, "x": float(i)}) for i in range(100)]
    d = decode(vals, "msgpack", S, {})
    assert d.dead == [] and len(d.frame) == 100
    broken = vals[:2] + [b"\xc1", msgpack.packb([1, 2]), vals[2][:-1]] + vals[3:5]
    d = decode(broken, "msgpack", S, {})
    assert [i for i, _ in d.dead] == [2, 3, 4] and list(d.rows) == [0, 1, 5, 6]
    assert "not a msgpack map" in d.dead[1][1]


def test_decoding_is_deterministic():
    rng = np.random.default_rng(0)
    vals = [j({"user": int(u), "ts": float(t), "x": (None if u % 7 == 0 else "s" if u % 11 == 0 else float(u))})
            for u, t in zip(rng.integers(0, 50, 500), rng.random(500) * 1e6, strict=True)]
    a, b = decode(vals, "json", S, {}), decode(list(vals), "json", S, {})
    assert a.dead == b.dead and list(a.rows) == list(b.rows)
    pd.testing.assert_frame_equal(a.frame, b.frame)


def test_locate_bad_by_bisection():
    bad = {3, 64, 65, 99}
    calls = []

    def check(idx):
        calls.append(len(idx))
        return not bad.intersection(idx.tolist())

    assert locate_bad(100, check) == sorted(bad)
    assert len(calls) < 60  # far fewer than one check per row
    assert locate_bad(0, check) == []


# ------------------------------------------------------------------------------------------- offsets log
def test_offsets_log_intents_commits_and_recovery(tmp_path):
    d = str(tmp_path / "c0")
    log = OffsetsLog(d, {0: 5, 1: 0})
    log.intent("b/0", [(0, 5, 10), (1, 0, 3)], {0: 4, 1: 3}, [{"partition": 0, "offset": 7, "reason": "x"}])
    log.commit("b/0")
    log.intent("b/1", [(0, 10, 12)], {0: 2}, [])
    assert log.acked(0) == 10 and log.next[0] == 12 and log.acked(1) == 3
    with pytest.raises(AssertionError, match="expected 12"):
        log.intent("b/2", [(0, 11, 13)], {}, [])  # ranges are contiguous per partition
    log.close()
    again = OffsetsLog(d, {0: 0, 1: 0})  # the log, not the start offsets, is the truth
    assert list(again.pending) == ["b/1"] and again.acked(0) == 10 and again.next[0] == 12
    assert again.events == {0: 4, 1: 3} and again.dead_count == {0: 1}
    again.commit("b/1")
    again.reset(1, 3, 50, "gone")
    assert again.acked(0) == 12 and again.next[1] == 50 and again.resets[0]["from"] == 3
    again.close()


def test_offsets_log_survives_a_torn_tail_and_compacts(tmp_path):
    d = str(tmp_path / "c0")
    log = OffsetsLog(d, {0: 0}, durability="none")
    for k in range(COMPACT_RECORDS // 2 + 5):  # two records per batch: compacts once
        log.intent(f"b/{k}", [(0, k, k + 1)], {0: 1}, [{"partition": 0, "offset": k, "reason": "r"}] if k < 3 else [])
        log.commit(f"b/{k}")
    log.intent("last", [(0, log.next[0], log.next[0] + 1)], {0: 1}, [])
    assert log.gen == 1
    log.close()
    gens = sorted(os.listdir(d))
    assert gens == ["gen-1"]
    seg = os.path.join(d, "gen-1", sorted(os.listdir(os.path.join(d, "gen-1")))[-1])
    with open(seg, "ab") as f:
        f.write(b"\x00\x00\x01")  # a torn record: dropped on recovery
    with pytest.warns(RuntimeWarning, match="torn tail"):
        again = OffsetsLog(d, {0: 0}, durability="none")
    n = COMPACT_RECORDS // 2 + 5
    assert again.events[0] == n and again.dead_count[0] == 3 and list(again.pending) == ["last"]
    assert again.acked(0) == n and again.next[0] == n + 1
    again.close()


def test_subscriptions_file_round_trip(tmp_path):
    assert load_subscriptions(str(tmp_path)) == {}
    save_subscriptions(str(tmp_path), {"ev": {"partitions": 3}})
    assert load_subscriptions(str(tmp_path)) == {"ev": {"partitions": 3}}
    assert os.stat(os.path.join(tmp_path, "kafka", "subscriptions.json")).st_mode & 0o077 == 0


# ------------------------------------------------------------------------------------------- config
CONFIG = """
[store]
path = "/data/x"

[[streams]]
name = "ev"
entities = ["user"]
timestamp = "ts"

[streams.kafka]
topic = "events"
bootstrap_servers = "b:9092"
format = "msgpack"
consumers = 2
max_delay = 0.1
consumer_config = { "security.protocol" = "PLAINTEXT" }
"""


def test_config_kafka_table_parses_and_round_trips():
    assert parse_config(CONFIG.replace("consumers = 2", "consumers = 2\ncatch_up = 0")).kafka[0][1].catch_up == 0
    cfg = parse_config(CONFIG)
    (stream, src), = cfg.kafka
    assert stream == "ev" and src == KafkaSource(topic="events", bootstrap_servers="b:9092", format="msgpack",
                                                 consumers=2, max_delay=0.1,
                                                 consumer_config={"security.protocol": "PLAINTEXT"})
    assert parse_config(dump_config(cfg)) == cfg


OBSERVATIONS = """
[[observations]]
name = "labels"
keys = ["user"]
timestamp = "at"

[observations.kafka]
topic = "labels"
bootstrap_servers = "b:9092"
"""


def test_config_observations_table_parses_and_round_trips():
    cfg = parse_config(CONFIG + OBSERVATIONS)
    (o,) = cfg.observations
    assert (o.name, o.keys, o.timestamp) == ("labels", ("user",), "at")
    assert o.source == KafkaSource(topic="labels", bootstrap_servers="b:9092")
    assert parse_config(dump_config(cfg)) == cfg
    assert parse_config(CONFIG + OBSERVATIONS.replace('timestamp = "at"\n', "")).observations[0].timestamp == "ts"


@pytest.mark.parametrize(("edit", "match"), [
    (('name = "labels"', 'name = "ev"'), r"observations\[0\]\.name: 'ev' is an event stream"),
    (('keys = ["user"]', "keys = []"), r"observations\[0\]\.keys: observation stream 'labels': give at least"),
    (('timestamp = "at"', 'timestamp = "user"'), r"observations\[0\]\.timestamp: .*also a key column"),
    (("[observations.kafka]\ntopic", "[observations.kafka]\ntopik"), r"unknown key 'topik'"),
    (("\n[observations.kafka]\ntopic = \"labels\"\nbootstrap_servers = \"b:9092\"\n", ""),
     r"observations\[0\].*kafka"),
])
def test_config_observations_errors_name_the_table_and_key(edit, match):
    assert edit[0] in OBSERVATIONS
    with pytest.raises(ConfigError, match=match):
        parse_config(CONFIG + OBSERVATIONS.replace(*edit))


@pytest.mark.parametrize(("edit", "match"), [
    (("format = \"msgpack\"", "format = \"xml\""), r":13: streams\[0\]\.kafka\.format: stream 'ev'.*format must"),
    (("consumers = 2", "consumers = \"2\""), r":14: streams\[0\]\.kafka\.consumers: expected an integer"),
    (("consumers = 2", "consumers = 2\ncatch_up = \"no\""), r"streams\[0\]\.kafka\.catch_up: expected an integer"),
    (("consumers = 2", "consumers = 2\ncatch_up = -5"), r"streams\[0\]\.kafka\.catch_up: stream 'ev'.*catch_up must"),
    (("topic = \"events\"", "topik = \"events\""), r"unknown key 'topik' \(did you mean 'topic'\?\)"),
])
def test_config_kafka_errors_name_line_and_key(edit, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(CONFIG.replace(*edit))


def test_observation_writer_appends_a_batch_once_and_drivers_read_it_while_written(tmp_path):
    """A Kafka consumer's observation log: a batch id already there is not appended again (after a crash
    between the append and the commit), a driver reads the writer's records besides its own, and a record
    still being written (a partial tail) is not read, nor truncated."""
    from rayfs.storage.observations import ObservationStreams, read_committed, writer_dirs

    store = str(tmp_path)
    w = ObservationStreams(store, "sync", writer="kafka-0")
    rows = pd.DataFrame({"user": ["a", "b"], "ts": [1.0, 2.0], "label": [1.0, 0.0]})
    assert w.append("labels", rows, keys={"user"}, batch_id="k/0") == 2
    w.close()
    w = ObservationStreams(store, "sync", writer="kafka-0")  # a restarted consumer
    assert w.append("labels", rows, keys={"user"}, batch_id="k/0") == 0  # applied already
    assert w.append("labels", rows.assign(ts=[3.0, 4.0]), keys={"user"}, batch_id="k/1") == 2
    w.close()
    drv = ObservationStreams(store, "sync")
    drv.append("labels", {"user": "c", "ts": 5.0, "label": 1.0})
    got = drv.read("labels")
    assert list(got["user"]) == ["c", "a", "b", "a", "b"] and list(got["ts"]) == [5.0, 1.0, 2.0, 3.0, 4.0]
    (d,) = writer_dirs(os.path.join(store, "observations", "labels"))
    seg = os.path.join(d, sorted(os.listdir(d))[0])
    size = os.path.getsize(seg)
    with open(seg, "ab") as f:  # a writer in the middle of its next record
        f.write(b"\x40\x00\x00\x00\x01\x02")
    assert len(list(read_committed(d))) == 2 and os.path.getsize(seg) == size + 6
    assert len(drv.read("labels")) == 5
    with pytest.raises(rayfs.SchemaError, match="'ts'"):  # the writer keeps the stream's kinds
        drv.append("labels", {"user": "c", "ts": pd.Timestamp("2024-01-01"), "label": 1.0})
    drv.close()
    with pytest.raises(rayfs.OptionError, match="kafka-<i>"):
        ObservationStreams(store, "sync", writer="elsewhere")


def test_an_observation_column_holds_one_kind_fixed_by_the_first_values_any_writer_stored(tmp_path):
    """Numbers then strings in a label column are refused (naming it), however the writers interleave: a
    writer that has not seen another's first values reads them before it fixes a kind. Entity-key columns
    may mix numbers and strings."""
    from rayfs.storage.observations import ObservationStreams

    store = str(tmp_path)
    drv = ObservationStreams(store, "sync")
    drv.append("labels", {"user": "a", "ts": 1.0})  # no amount yet
    assert drv.kinds("labels") == {"user": "str", "ts": "num"}
    w = ObservationStreams(store, "sync", writer="kafka-0")
    w.append("labels", pd.DataFrame({"user": ["a", "b"], "ts": [2.0, 3.0], "amount": [5, 6.5]}),
             keys={"user"}, batch_id="k/0")
    # The driver's view predates the consumer's append; its first amounts are strings: refused, not stored.
    with pytest.raises(rayfs.SchemaError, match=r"'labels' column 'amount': holds number values; this append "
                                                r"gives it string"):
        drv.append("labels", {"user": "c", "ts": 4.0, "amount": "4"}, keys={"user"})
    with pytest.raises(rayfs.SchemaError, match="'amount'.*all numbers or all strings"):
        drv.append("labels", [{"user": "c", "ts": 4.0, "amount": 7}, {"user": "d", "ts": 5.0, "amount": "7"}],
                   keys={"user"})
    drv.append("labels", [{"user": 7, "ts": 4.0, "amount": 7}, {"user": "e", "ts": 5.0, "amount": 8}],
               keys={"user"})  # keys may mix
    got = drv.read("labels")
    assert got["amount"].dtype == np.float64 and got["amount"].tolist()[1:] == [7.0, 8.0, 5.0, 6.5]
    assert got["user"].tolist() == ["a", 7, "e", "a", "b"]
    assert drv.kinds("labels") == {"user": "mixed", "ts": "num", "amount": "num"}
    with pytest.raises(rayfs.SchemaError, match="'amount'"):  # the consumer's own view agrees
        w.check("labels", {"user": "c", "ts": 4.0, "amount": "x"}, keys={"user"})
    drv.close()
    w.close()
