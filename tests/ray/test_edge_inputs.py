"""Edge inputs through the public API, and every public entry point's error path.

Pinned: a where clause on a column whose first batch holds only NaN neither fails that ingest nor blocks
later ones or the next open; float keys beyond 2**53 are refused in reads as in ingest; an observation append
with repeated column names, a read of an entity no stream has, meaningless ``open`` and ``audit`` options and
a store path that is a file are RayfsErrors with nothing written or started. Then a table gives every public
method of :class:`rayfs.FeatureStore` (and every public callable of ``rayfs``) at least one bad call, and
every method a closed handle: each ends in the RayfsError subclass it documents, and a method added without
an entry fails the enumeration.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import pandas as pd
import pytest

import rayfs
from rayfs import errors as E

T = pd.Timestamp("2024-01-01 12:00:00")
S = pd.Timedelta(seconds=1)


@pytest.fixture(scope="module")
def store(ray_session, tmp_path_factory):
    path = tmp_path_factory.mktemp("edges") / "s"
    with rayfs.FeatureStore.open(path, shards=2) as st:
        st.register_stream("ev", entities=["k"], timestamp="ts")
        st.register_sql("SELECT k, COUNT(*) AS n, SUM(v) AS sv FROM ev GROUP BY k")
        st.ingest("ev", pd.DataFrame({"k": ["a", "b", "a"], "ts": [T, T, T + S], "v": [1.0, 2.0, 3.0]}))
        yield st


def offsets(st) -> list:
    return [(i["next_offset"], i["log_bytes"]) for i in st.info()]


def online(st, keys=("a", "b")) -> dict:
    return st.get_features("k", list(keys), features=["n", "sv"]).to_dict("list")


# ------------------------------------------------------------------------------------------ where on NaN
def test_a_where_on_a_column_first_sent_all_nan_blocks_neither_ingest_nor_the_next_open(ray_session, tmp_path):
    path = tmp_path / "s"
    with rayfs.FeatureStore.open(path, shards=2) as st:
        st.register_stream("evq", entities=["k"], timestamp="ts")
        st.register_stream("other", entities=["k"], timestamp="ts")
        st.register_sql("SELECT k, COUNT(*) AS nq FROM evq WHERE x = 'q' GROUP BY k")
        st.register_sql("SELECT k, COUNT(*) AS no FROM other GROUP BY k")
        st.ingest("evq", pd.DataFrame({"k": ["a", "b", "c"], "ts": [T] * 3, "x": [np.nan] * 3}))
        st.ingest("other", pd.DataFrame({"k": ["a"], "ts": [T]}))
        st.ingest("evq", pd.DataFrame({"k": ["a", "b"], "ts": [T + S] * 2, "x": ["q", "r"]}))
        # the column's kind is now fixed: numbers are refused before anything is written
        with pytest.raises(rayfs.SchemaError, match="'x'"):
            st.ingest("evq", pd.DataFrame({"k": ["a"], "ts": [T + S], "x": [1.0]}))
        assert st.get_features("k", ["a", "b", "c"], features=["nq", "no"]).to_dict("list") == {
            "k": ["a", "b", "c"], "nq": [1, 0, 0], "no": [1, 0, 0]}
        obs = pd.DataFrame({"k": ["a", "a"], "ts": [T + S, T + 2 * S]})
        assert st.training_set(obs, features=["nq"])["nq"].tolist() == [0, 1]
        assert not os.path.exists(path / "wal-rejected")
    with rayfs.FeatureStore.open(path) as st:
        assert st.get_features("k", ["a", "b"], features=["nq", "no"])["nq"].tolist() == [1, 0]
        st.ingest("evq", pd.DataFrame({"k": ["b"], "ts": [T + 2 * S], "x": [None]}))
        st.ingest("evq", pd.DataFrame({"k": ["b"], "ts": [T + 2 * S], "x": [np.nan]}))
        assert st.get_features("k", ["a", "b"], features=["nq"])["nq"].tolist() == [1, 0]


# ------------------------------------------------------------------------------------------ keys, reads
def test_float_keys_beyond_2_53_are_refused_in_reads_as_in_ingest(store):
    before = (offsets(store), online(store))
    for keys in ([2.0**63], [1e30, "a"], [np.inf]):
        with pytest.raises(rayfs.SchemaError, match="'k'"):
            store.get_features("k", keys, features=["n"])
        with pytest.raises(rayfs.SchemaError, match="'k'"):
            store.ingest("ev", pd.DataFrame({"k": pd.Series(keys, dtype=object), "ts": [T] * len(keys),
                                             "v": [1.0] * len(keys)}))
        with pytest.raises(rayfs.SchemaError, match="'k'"):
            store.training_set(pd.DataFrame({"k": pd.Series(keys, dtype=object), "ts": [T] * len(keys)}),
                               features=["n"])
    assert (offsets(store), online(store)) == before
    assert store.get_features("k", [2.0**53, 1.0], features=["n"])["n"].tolist() == [0, 0]


def test_a_read_of_an_entity_no_stream_has_is_refused(store):
    with pytest.raises(rayfs.DefinitionError, match="entity 'user'.*no stream.*'k'"):
        store.get_features("user", ["a"])
    assert store.get_features("k", ["a"])["n"].tolist() == [2]


def test_an_observation_append_with_repeated_columns_is_refused_and_nothing_written(store):
    rows = pd.DataFrame([["a", T, 1, 2]], columns=["k", "ts", "y", "y"])
    with pytest.raises(rayfs.SchemaError, match="'labdup'.*duplicate column names \\['y'\\]"):
        store.append_observation("labdup", rows)
    with pytest.raises(rayfs.UnknownStreamError):
        store.observations("labdup")


def test_meaningless_open_options_and_a_file_as_store_path_start_and_create_nothing(ray_session, tmp_path):
    for kwargs, error, needle in (({"segment_bytes": 0}, rayfs.OptionError, "segment_bytes"),
                                  ({"snapshot_every": -1}, rayfs.OptionError, "snapshot_every"),
                                  ({"snapshot_every": 2.5}, rayfs.OptionError, "snapshot_every"),
                                  ({"segment_bytes": True}, rayfs.OptionError, "segment_bytes")):
        with pytest.raises(error, match=needle):
            rayfs.FeatureStore.open(tmp_path / "s", shards=1, **kwargs)
    assert not (tmp_path / "s").exists()
    (tmp_path / "f").write_text("not a store")
    with pytest.raises(rayfs.StoreOpenError, match="is a file"):
        rayfs.FeatureStore.open(tmp_path / "f", shards=1)
    assert (tmp_path / "f").read_text() == "not a store"
    with rayfs.FeatureStore.open(tmp_path / "s", shards=1, segment_bytes=np.int64(1 << 20),
                                 snapshot_every=np.int64(1)) as st:
        st.register_stream("ev", entities=["k"], timestamp="ts")
        st.ingest("ev", {"k": ["a"], "ts": [T]})


# ------------------------------------------------------------------------------------------ every entry point
def _noop(df):
    return df["a"]


OD_BAD = rayfs.OnDemandFeature(name="od_bad", function=_noop, inputs=("nope_feature",))

# name -> bad calls ``(call(store, tmp_path), the RayfsError subclass it raises)``
BAD_CALLS: dict[str, list] = {
    "append_observation": [
        (lambda s, p: s.append_observation("lab_e", {"k": "a"}), E.SchemaError),
        (lambda s, p: s.append_observation("ev", {"k": "a", "ts": T}), E.DefinitionError)],
    "apply": [(lambda s, p: s.apply({"streams": []}), E.OptionError),
              (lambda s, p: s.apply(p / "missing.toml"), E.ConfigError)],
    "audit": [(lambda s, p: s.audit(0), E.OptionError),
              (lambda s, p: s.audit(features=["nope"]), E.UnknownFeatureError)],
    "connect": [(lambda s, p: rayfs.FeatureStore.connect("no_store_here_r13"), E.StoreOpenError)],
    "dead_letters": [(lambda s, p: s.dead_letters("ev"), E.SourceError)],
    "describe": [(lambda s, p: s.describe("nope"), E.UnknownFeatureError)],
    "drop_feature": [(lambda s, p: s.drop_feature("nope"), E.UnknownFeatureError),
                     (lambda s, p: s.drop_feature("n", 9), E.UnknownFeatureError)],
    "feature_stats": [(lambda s, p: s.feature_stats("nope"), E.UnknownFeatureError)],
    "get_features": [(lambda s, p: s.get_features("k", "a"), E.SchemaError),
                     (lambda s, p: s.get_features("k", [True]), E.SchemaError),
                     (lambda s, p: s.get_features("user", ["a"]), E.DefinitionError),
                     (lambda s, p: s.get_features("k", ["a"], ["nope"]), E.UnknownFeatureError)],
    "ingest": [(lambda s, p: s.ingest("ev", {"k": ["a"]}), E.SchemaError),
               (lambda s, p: s.ingest("nope", {"k": ["a"], "ts": [T]}), E.UnknownStreamError),
               (lambda s, p: s.ingest("ev", {"k": ["a"], "ts": [T.value], "v": [1.0]}), E.TimestampError)],
    "observations": [(lambda s, p: s.observations("nope"), E.UnknownStreamError)],
    "open": [(lambda s, p: rayfs.FeatureStore.open(p / "o", shards=0), E.DefinitionError),
             (lambda s, p: rayfs.FeatureStore.open(p / "o", durability="fast"), E.DefinitionError),
             (lambda s, p: rayfs.FeatureStore.open(p / "o", segment_bytes=0), E.OptionError)],
    "register_feature": [
        (lambda s, p: s.register_feature(rayfs.Feature(name="w", stream="ev", entity="k", agg="count",
                                                       window="999999999d")), E.WindowError),
        (lambda s, p: s.register_feature("n"), E.DefinitionError)],
    "register_on_demand": [(lambda s, p: s.register_on_demand(OD_BAD), E.RayfsError)],
    "register_sql": [(lambda s, p: s.register_sql("SELECT k FROM ev"), E.SqlError)],
    "register_stream": [(lambda s, p: s.register_stream("ev", ["k", "j"], "ts"), E.DefinitionError)],
    "subscribe": [(lambda s, p: s.subscribe("ev", "topic"), E.SourceError)],
    "training_set": [(lambda s, p: s.training_set(pd.DataFrame({"k": ["a"]})), E.SchemaError),
                     (lambda s, p: s.training_set("nope"), E.UnknownStreamError),
                     (lambda s, p: s.training_set(pd.DataFrame({"k": ["a"], "ts": [T]}), output="csv"),
                      E.DefinitionError)],
    "unsubscribe": [(lambda s, p: s.unsubscribe("ev"), E.SourceError)],
    "wait_caught_up": [(lambda s, p: s.wait_caught_up("ev", timeout=1), E.SourceError)],
}
# Entry points without an input to get wrong: their error path is a closed (or stopped) store.
NO_INPUT = {"alive", "close", "features", "flush", "info", "list_features", "snapshot", "stats", "stop", "streams",
            "subscriptions", "wait_until_ready"}
# Answer on a closed handle without an error: close is idempotent, alive answers False, and streams and
# features are the definitions the handle holds; open and connect make a new handle.
CLOSED_OK = {"alive", "close", "features", "streams", "open", "connect"}

TOP_LEVEL_BAD = {
    "Feature": (lambda p: rayfs.Feature(name="n", stream="ev", entity="k", agg="median"), E.AggregateError),
    "Stream": (lambda p: rayfs.Stream(name="ev", entities=(), timestamp="ts"), E.DefinitionError),
    "OnDemandFeature": (lambda p: rayfs.OnDemandFeature(name="x"), E.DefinitionError),
    "on_demand": (lambda p: rayfs.on_demand("bad name", request=["a"])(_noop), E.DefinitionError),
    "KafkaSource": (lambda p: rayfs.KafkaSource(topic="", bootstrap_servers="localhost:1"), E.SourceError),
    "connect": (lambda p: rayfs.connect("no_store_here_r13"), E.StoreOpenError),
    "iter_batches": (lambda p: rayfs.iter_batches(p / "missing.csv"), E.FileFormatError),
    "write_table": (lambda p: rayfs.write_table(pd.DataFrame({"a": [1]}), p / "t.xyz"), E.FileFormatError),
    "load_config": (lambda p: rayfs.load_config(p / "missing.toml"), E.ConfigError),
    "FeatureStore": (lambda p: rayfs.FeatureStore.open(p / "o", shards=-1), E.DefinitionError),
}
# A plain record (built by load_config, which validates it).
TOP_LEVEL_EXEMPT = {"StoreConfig"}


def public_methods() -> set[str]:
    return {n for n in dir(rayfs.FeatureStore) if not n.startswith("_")}


def test_the_table_names_every_public_entry_point():
    assert set(BAD_CALLS) | NO_INPUT == public_methods()
    assert not set(BAD_CALLS) & NO_INPUT
    callables = {n for n in rayfs.__all__ if callable(getattr(rayfs, n))
                 and not (inspect.isclass(getattr(rayfs, n)) and issubclass(getattr(rayfs, n), BaseException))}
    assert set(TOP_LEVEL_BAD) | TOP_LEVEL_EXEMPT == callables


@pytest.mark.parametrize("name, i", [(n, i) for n, calls in sorted(BAD_CALLS.items()) for i in range(len(calls))])
def test_every_entry_points_bad_input_ends_in_a_rayfs_error_and_changes_nothing(store, tmp_path, name, i):
    call, error = BAD_CALLS[name][i]
    before = (offsets(store), online(store), store.streams, store.features)
    with pytest.raises(error) as info:
        call(store, tmp_path)
    assert isinstance(info.value, rayfs.RayfsError)
    assert (offsets(store), online(store), store.streams, store.features) == before
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", sorted(TOP_LEVEL_BAD))
def test_every_public_callable_ends_its_error_path_in_a_rayfs_error(ray_session, tmp_path, name):
    call, error = TOP_LEVEL_BAD[name]
    with pytest.raises(error):
        call(tmp_path)
    assert not (tmp_path / "o").exists()


def test_a_closed_handle_refuses_every_entry_point_that_needs_the_store(ray_session, tmp_path):
    s = rayfs.FeatureStore.open(tmp_path / "s", shards=1)
    s.register_stream("ev", entities=["k"], timestamp="ts")
    s.close()
    args = {"append_observation": ("lab", {"k": "a", "ts": T}), "apply": (tmp_path / "missing.toml",),
            "dead_letters": ("ev",), "describe": ("n",), "drop_feature": ("n",), "feature_stats": (),
            "get_features": ("k", ["a"]), "ingest": ("ev", {"k": ["a"], "ts": [T]}), "observations": ("lab",),
            "register_feature": (rayfs.Feature(name="n", stream="ev", entity="k", agg="count"),),
            "register_on_demand": (OD_BAD,), "register_sql": ("SELECT k, COUNT(*) AS n FROM ev GROUP BY k",),
            "register_stream": ("ev2", ["k"], "ts"), "subscribe": ("ev", "topic"),
            "training_set": (pd.DataFrame({"k": ["a"], "ts": [T]}),), "unsubscribe": ("ev",),
            "wait_caught_up": ("ev",), "audit": ()}
    for name in sorted(public_methods() - CLOSED_OK):
        with pytest.raises(E.StoreClosedError):
            getattr(s, name)(*args.get(name, ()))
    assert s.alive() is False
    s.close()


def test_waiting_for_a_store_another_driver_stopped_is_a_store_closed_error(ray_session, tmp_path):
    name = f"edges_{os.getpid()}"
    a = rayfs.FeatureStore.open(tmp_path / "s", shards=1, name=name)
    a.wait_until_ready(timeout=30)
    rayfs.connect(name).stop()
    with pytest.raises(E.StoreClosedError, match=f"'{name}' was stopped"):
        a.wait_until_ready(timeout=600)  # raised as soon as the store is found stopped, not at the timeout
    a.close()


def test_a_column_sent_with_nulls_only_can_be_read_by_features_registered_later(ray_session, tmp_path):
    with rayfs.FeatureStore.open(tmp_path / "s", shards=2) as st:
        st.register_stream("evn", entities=["k"], timestamp="ts")
        st.ingest("evn", pd.DataFrame({"k": ["a", "b"], "ts": [T, T], "v": [None, None], "s": ["x", "y"]}))
        with pytest.raises(rayfs.DefinitionError, match=r"no column\(s\) \['vv'\]"):  # a typo is still refused
            st.register_feature(rayfs.Feature(name="mv", stream="evn", entity="k", agg="max", column="vv"))
        st.register_feature(rayfs.Feature(name="mv", stream="evn", entity="k", agg="max", column="v"))
        st.register_sql("SELECT k, COUNT(*) AS pos FROM evn WHERE v > 0 GROUP BY k")
        st.ingest("evn", pd.DataFrame({"k": ["a"], "ts": [T + S], "v": [2.0]}))
    with rayfs.FeatureStore.open(tmp_path / "s") as st:
        st.register_feature(rayfs.Feature(name="lv", stream="evn", entity="k", agg="last", column="v", window="1d"))
        got = st.get_features("k", ["a", "b"], features=["mv", "pos", "lv"])
        assert got["pos"].tolist() == [1, 0]
        for f in ("mv", "lv"):
            assert got[f].iloc[0] == 2.0 and np.isnan(got[f].iloc[1]), f
