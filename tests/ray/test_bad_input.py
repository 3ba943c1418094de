"""Bad input: each case raises the documented RayfsError subclass naming the culprit, and leaves the
store exactly as it was (nothing logged, nothing folded, no definition or schema changed).

All cases share one store (module scope); every case compares the store's full observable state
before and after its bad call: per-shard log offsets and bytes, newest event times and schemas, the
catalog file, definitions, online values of every feature and a training set.
"""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pandas as pd
import pytest

import rayfs

T = pd.Timestamp("2024-01-01 12:00:00")
USERS = ["u0", "u1", "u2", "u3", "u4", "never", 7]
ITEMS = [0, 1, 2, 3, 99]


def good(n: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user": np.array([f"u{i}" for i in rng.integers(0, 5, n)], dtype=object),
        "item": rng.integers(0, 4, n),
        "ts": [T + pd.Timedelta(seconds=int(s)) for s in rng.integers(0, 86400, n)],
        "x": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
        "s": pd.Series(np.array(["p", "q", "r"], dtype=object)[rng.integers(0, 3, n)], dtype=object),
    })


FEATURES = [
    rayfs.Feature(name="n", stream="ev", entity="user", agg="count"),
    rayfs.Feature(name="sx_1h", stream="ev", entity="user", agg="sum", column="x", window="1h"),
    rayfs.Feature(name="last_s", stream="ev", entity="user", agg="last", column="s"),
    rayfs.Feature(name="i_n", stream="ev", entity="item", agg="count", where="x > 0"),
    rayfs.Feature(name="i_max_1d", stream="ev", entity="item", agg="max", column="x", window="1d"),
    rayfs.Feature(name="sy", stream="ev2", entity="user", agg="sum", column="y"),
]
OBS = pd.DataFrame({"user": pd.Series(["u0", "u1", "u2", "never", "u3"] * 8, dtype=object),
                    "item": [0, 1, 2, 3, 99] * 8,
                    "ts": [T + pd.Timedelta(hours=h) for h in range(40)]})


@pytest.fixture(scope="module")
def store(ray_session, tmp_path_factory):
    path = tmp_path_factory.mktemp("bad") / "s"
    with rayfs.FeatureStore.open(path, shards=4) as st:
        st.register_stream("ev", entities=["user", "item"], timestamp="ts")
        st.register_stream("ev2", entities=["user"], timestamp="ts")
        for f in FEATURES:
            st.register_feature(f)
        for seed in range(4):
            st.ingest("ev", good(60, seed))
        # ev2 has events, but column y has only ever been null: its kind is still unknown.
        st.ingest("ev2", pd.DataFrame({"user": ["u0", "u1"], "ts": [T, T], "y": [np.nan, np.nan]}))
        yield st


def state(st) -> dict:
    info = st.info()
    obs_dir = os.path.join(st.path, "observations")
    return {
        "shards": [(i["shard"], i["next_offset"], i["log_bytes"], i["local_max"], i["schema"]) for i in info],
        "streams": st.streams,
        "features": st.features,
        "catalog": open(os.path.join(st.path, "catalog.json")).read(),
        "observations": sorted(os.listdir(obs_dir)) if os.path.isdir(obs_dir) else [],
        "user": st.get_features("user", USERS, features=["n", "sx_1h", "last_s", "sy"]),
        "item": st.get_features("item", ITEMS, features=["i_n", "i_max_1d"]),
        "train": st.training_set(OBS, features=["n", "sx_1h", "last_s", "i_n", "i_max_1d", "sy"], timestamp="ts"),
    }


def assert_same_state(before: dict, after: dict) -> None:
    for k in ("shards", "streams", "features", "catalog", "observations"):
        assert after[k] == before[k], k
    for k in ("user", "item", "train"):
        pd.testing.assert_frame_equal(after[k], before[k], obj=k)


def with_(df: pd.DataFrame, **cols) -> pd.DataFrame:
    df = df.copy()
    for c, v in cols.items():
        df[c] = pd.Series(v, dtype=object) if isinstance(v, list) else v
    return df


def nan_ts_at(n: int, row: int) -> pd.DataFrame:
    df = good(n, 42)
    t = df["ts"].astype("datetime64[ns]").astype("int64").astype(float) / 1e9
    t.iloc[row] = np.nan
    return df.assign(ts=t)


def F(**kw):
    return rayfs.Feature(**{"name": "newf", "stream": "ev", "entity": "user", "agg": "count", **kw})


E = rayfs.errors
CASES = [
    # ingest: the batch
    ("unknown_stream", lambda s: s.ingest("nope", good()), E.UnknownStreamError, "'nope'"),
    ("missing_ts_column", lambda s: s.ingest("ev", good().drop(columns="ts")), E.SchemaError, "'ts'"),
    ("nan_ts", lambda s: s.ingest("ev", nan_ts_at(3, 1)), E.TimestampError, "'ts'"),
    ("none_ts", lambda s: s.ingest("ev", with_(good(), ts=[T, None, T])), E.TimestampError, "'ts'"),
    ("nat_ts", lambda s: s.ingest("ev", good().assign(ts=[T, pd.NaT, T])), E.TimestampError, "'ts'"),
    ("string_ts", lambda s: s.ingest("ev", good().assign(ts=["2024-01-01"] * 3)), E.TimestampError, "'ts'"),
    ("bool_ts", lambda s: s.ingest("ev", good().assign(ts=[True, False, True])), E.TimestampError, "'ts'"),
    ("inf_ts", lambda s: s.ingest("ev", good().assign(ts=[1.7e9, np.inf, 1.7e9])), E.TimestampError, "'ts'"),
    ("one_nan_ts_in_1000_rows", lambda s: s.ingest("ev", nan_ts_at(1000, 517)), E.TimestampError, "517"),
    ("missing_entity_column", lambda s: s.ingest("ev", good().drop(columns="item")), E.SchemaError, "'item'"),
    ("value_type_changes", lambda s: s.ingest("ev", good().assign(x=["a", "b", "c"])), E.SchemaError, "'x'"),
    ("value_types_mixed_in_batch", lambda s: s.ingest("ev", with_(good(), x=[1.0, "b", 2.0])), E.SchemaError,
     "'x'"),
    ("string_type_changes", lambda s: s.ingest("ev", good().assign(s=[1.0, 2.0, 3.0])), E.SchemaError, "'s'"),
    ("needed_value_column_missing", lambda s: s.ingest("ev", good().drop(columns="s")), E.SchemaError, "'s'"),
    ("needed_where_column_missing", lambda s: s.ingest("ev", good().drop(columns="x")), E.SchemaError, "'x'"),
    ("empty_dataframe", lambda s: s.ingest("ev", good().iloc[:0]), E.SchemaError, "'ev'"),
    ("empty_list", lambda s: s.ingest("ev", []), E.SchemaError, "'ev'"),
    ("empty_dict_of_arrays", lambda s: s.ingest("ev", {c: np.array([]) for c in good().columns}), E.SchemaError,
     "'ev'"),
    ("fractional_entity_key", lambda s: s.ingest("ev", good().assign(item=[1.5, 2.0, 3.0])), E.SchemaError,
     "'item'"),
    ("bool_entity_key", lambda s: s.ingest("ev", good().assign(user=[True, False, True])), E.SchemaError,
     "'user'"),
    ("reserved_column_name", lambda s: s.ingest("ev", good().assign(__x=1.0)), E.SchemaError, "__x"),
    ("unsupported_batch_type", lambda s: s.ingest("ev", "user,ts\na,1"), E.SchemaError, "str"),
    ("ragged_dict_batch", lambda s: s.ingest("ev", {"user": ["a"], "item": [1, 2], "ts": [1.0], "x": [1.0],
                                                    "s": ["p"]}), E.SchemaError, "'ev'"),
    # definitions
    ("duplicate_stream_other_entities", lambda s: s.register_stream("ev", ["user"], "ts"), E.DefinitionError,
     "'ev'"),
    ("duplicate_stream_other_ts", lambda s: s.register_stream("ev", ["user", "item"], "time"),
     E.DefinitionError, "'ev'"),
    ("sql_unparseable", lambda s: s.register_sql("SELEC user, COUNT(*) FROM ev GROUP BY user"), E.SqlError,
     "SELEC"),
    ("sql_no_group_by", lambda s: s.register_sql("SELECT user, SUM(x) FROM ev"), E.SqlError, "GROUP BY"),
    ("sql_arithmetic", lambda s: s.register_sql("SELECT user, SUM(x + 1) FROM ev GROUP BY user"), E.SqlError,
     "x + 1"),
    ("sql_join", lambda s: s.register_sql("SELECT user, COUNT(*) FROM ev JOIN ev2 ON ev.user = ev2.user "
                                          "GROUP BY user"), E.SqlError, "JOIN"),
    ("sql_unknown_function", lambda s: s.register_sql("SELECT user, MEDIAN(x) FROM ev GROUP BY user"),
     E.SqlError, "MEDIAN"),
    ("sql_group_by_non_entity", lambda s: s.register_sql("SELECT x, COUNT(*) FROM ev GROUP BY x"), E.SqlError,
     "'x'"),
    ("sql_not_select", lambda s: s.register_sql("DELETE FROM ev"), E.SqlError, "DELETE"),
    ("sql_two_statements", lambda s: s.register_sql("SELECT user, COUNT(*) AS a FROM ev GROUP BY user; "
                                                    "SELECT user, COUNT(*) AS b FROM ev GROUP BY user"),
     E.SqlError, "2"),
    ("sql_empty", lambda s: s.register_sql("   "), E.SqlError, "empty"),
    ("sql_unknown_stream", lambda s: s.register_sql("SELECT user, COUNT(*) FROM nope GROUP BY user"),
     E.UnknownStreamError, "'nope'"),
    ("sql_bad_where", lambda s: s.register_sql("SELECT user, COUNT(*) AS c FROM ev WHERE x > 'a' "
                                               "GROUP BY user"), E.SqlError, "x"),
    ("sql_one_bad_of_many", lambda s: s.register_sql("SELECT user, COUNT(*) AS fresh1, SUM(s) AS fresh2 "
                                                     "FROM ev GROUP BY user"), E.DefinitionError, "fresh2"),
    ("sql_duplicate_alias", lambda s: s.register_sql("SELECT user, COUNT(*) AS d, SUM(x) AS d FROM ev "
                                                     "GROUP BY user"), E.SqlError, "'d'"),
    ("unknown_aggregate", lambda s: s.register_feature(F(agg="median", column="x")), E.AggregateError, "median"),
    ("aggregate_without_column", lambda s: s.register_feature(F(agg="sum")), E.AggregateError, "sum"),
    ("window_bad_unit", lambda s: s.register_feature(F(window="7x")), E.WindowError, "7x"),
    ("window_negative", lambda s: s.register_feature(F(window="-1d")), E.WindowError, "-1d"),
    ("window_zero_int", lambda s: s.register_feature(F(window=0)), E.WindowError, "0"),
    ("window_zero_string", lambda s: s.register_feature(F(window="0s")), E.WindowError, "0s"),
    ("window_zero_timedelta", lambda s: s.register_feature(F(window=dt.timedelta(0))), E.WindowError, "newf"),
    ("window_negative_timedelta", lambda s: s.register_feature(F(window=dt.timedelta(hours=-1))), E.WindowError,
     "newf"),
    ("sql_bad_window", lambda s: s.register_sql("SELECT user, COUNT(*) AS c FROM ev GROUP BY user", window="7x"),
     E.WindowError, "7x"),
    ("feature_unknown_stream", lambda s: s.register_feature(F(stream="nostream")), E.UnknownStreamError,
     "'nostream'"),
    ("feature_entity_not_of_stream", lambda s: s.register_feature(F(entity="x")), E.DefinitionError, "'x'"),
    ("feature_entity_of_other_stream", lambda s: s.register_feature(F(stream="ev2", entity="item")),
     E.DefinitionError, "'item'"),
    ("feature_unknown_column", lambda s: s.register_feature(F(agg="sum", column="zzz")), E.DefinitionError, "zzz"),
    ("feature_where_unknown_column", lambda s: s.register_feature(F(where="zzz > 1")), E.DefinitionError, "zzz"),
    ("feature_numeric_agg_on_strings", lambda s: s.register_feature(F(agg="mean", column="s")), E.DefinitionError,
     "'s'"),
    ("feature_on_timestamp_column", lambda s: s.register_feature(F(agg="max", column="ts")), E.DefinitionError,
     "'ts'"),
    ("drop_unknown_feature", lambda s: s.drop_feature("nope_feat"), E.UnknownFeatureError, "nope_feat"),
    ("drop_unknown_version", lambda s: s.drop_feature("n", 7), E.UnknownFeatureError, "n@7"),
    ("get_unknown_version", lambda s: s.get_features("user", ["u0"], features=["n@9"]), E.UnknownFeatureError, "n@9"),
    ("feature_bad_k", lambda s: s.register_feature(F(agg="count", k=3)), E.AggregateError, "k"),
    ("feature_bad_tags", lambda s: s.register_feature(F(tags=[""])), E.DefinitionError, "tags"),
    ("training_bad_output", lambda s: s.training_set(OBS, features=["n"], timestamp="ts", output="csv"),
     E.DefinitionError, "csv"),
    ("feature_not_a_feature", lambda s: s.register_feature({"name": "n"}), E.DefinitionError, "dict"),
    # reads
    ("get_unknown_feature", lambda s: s.get_features("user", ["u0"], features=["nope_feat"]),
     E.UnknownFeatureError, "nope_feat"),
    ("get_feature_of_other_entity", lambda s: s.get_features("user", ["u0"], features=["n", "i_n"]),
     E.DefinitionError, "'i_n'"),
    ("get_bad_key_type", lambda s: s.get_features("user", [1.5], features=["n"]), E.SchemaError, "'user'"),
    ("training_unknown_feature", lambda s: s.training_set(OBS, features=["n", "nope_feat"], timestamp="ts"),
     E.UnknownFeatureError, "nope_feat"),
    ("training_missing_ts", lambda s: s.training_set(OBS.drop(columns="ts"), features=["n"], timestamp="ts"),
     E.SchemaError, "'ts'"),
    ("training_missing_entity", lambda s: s.training_set(OBS.drop(columns="item"), features=["i_n"],
                                                         timestamp="ts"), E.SchemaError, "'item'"),
    ("training_nan_ts", lambda s: s.training_set(OBS.assign(ts=[np.nan] + [1.7e9] * 39), features=["n"],
                                                 timestamp="ts"), E.TimestampError, "'ts'"),
    ("training_unknown_observation_stream", lambda s: s.training_set("nolabels", timestamp="ts"),
     E.UnknownStreamError, "'nolabels'"),
    ("observation_empty", lambda s: s.append_observation("labels", []), E.SchemaError, "'labels'"),
    ("observation_named_like_event_stream", lambda s: s.append_observation("ev", {"user": "u0", "ts": T}),
     E.DefinitionError, "'ev'"),
    ("observation_bad_name", lambda s: s.append_observation("bad name", {"user": "u0", "ts": T}),
     E.DefinitionError, "bad name"),
    # arguments of the wrong type: OptionError (or the definition error) naming the argument, not a TypeError
    ("open_path_not_a_path", lambda s: rayfs.FeatureStore.open(5), E.OptionError, "path"),
    ("open_segment_bytes_not_an_int", lambda s: rayfs.FeatureStore.open(s.path + "-other", segment_bytes="64M"),
     E.OptionError, "segment_bytes"),
    ("open_snapshot_every_not_an_int", lambda s: rayfs.FeatureStore.open(s.path + "-other", snapshot_every="x"),
     E.OptionError, "snapshot_every"),
    ("open_namespace_not_a_str", lambda s: rayfs.FeatureStore.open(s.path + "-other", namespace=5), E.OptionError,
     "namespace"),
    ("connect_namespace_not_a_str", lambda s: rayfs.connect("nostore", namespace=5), E.OptionError, "namespace"),
    ("stream_entities_not_names", lambda s: s.register_stream("ev3", entities=5, timestamp="ts"),
     E.DefinitionError, "entities"),
    ("feature_progress_not_callable", lambda s: s.register_feature(F(), progress=5), E.OptionError, "progress"),
    ("sql_unknown_metadata", lambda s: s.register_sql("SELECT user, COUNT(*) AS newf FROM ev GROUP BY user",
                                                       colour="red"), E.DefinitionError, "'colour'"),
    ("get_features_not_names", lambda s: s.get_features("user", ["u0"], features=5), E.OptionError, "features"),
    ("training_features_not_names", lambda s: s.training_set(OBS, features=5, timestamp="ts"), E.OptionError,
     "features"),
    ("observation_name_not_a_str", lambda s: s.append_observation(5, {"user": "u0", "ts": T}), E.DefinitionError,
     "observation stream name 5"),
    ("observations_name_not_a_str", lambda s: s.observations(5), E.UnknownStreamError, "5"),
    ("feature_stats_not_names", lambda s: s.feature_stats(5), E.OptionError, "features"),
    ("feature_stats_of_not_a_frame", lambda s: s.feature_stats(training_set=5), E.OptionError, "training_set"),
    ("audit_n_not_an_int", lambda s: s.audit(n="10"), E.OptionError, "n must be a positive integer"),
    ("audit_seed_not_an_int", lambda s: s.audit(seed="x"), E.OptionError, "seed"),
    ("wait_until_ready_timeout_not_a_number", lambda s: s.wait_until_ready(timeout="1"), E.OptionError,
     "timeout"),
    ("wait_caught_up_timeout_not_a_number", lambda s: s.wait_caught_up("ev", timeout="1"), E.OptionError,
     "timeout"),
    # Strings into a column whose kind is still unknown but which a numeric feature (sum) reads.
    ("strings_for_numeric_feature", lambda s: s.ingest("ev2", pd.DataFrame({"user": ["u0"], "ts": [T],
                                                                            "y": ["oops"]})),
     E.SchemaError, "'y'"),
]


@pytest.mark.parametrize("call,exc,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_and_changes_nothing(store, call, exc, needle):
    before = state(store)
    with pytest.raises(exc) as info:
        call(store)
    assert isinstance(info.value, rayfs.RayfsError)
    assert needle in str(info.value), f"message lacks {needle!r}: {info.value}"
    assert_same_state(before, state(store))


def test_store_still_works_after_bad_input(store):
    """After all the bad calls, a good batch is accepted and counted (the store is not wedged)."""
    before = store.get_features("user", ["u0"], features=["n"])["n"].iloc[0]
    batch = good(5, 1).assign(user="u0")
    store.ingest("ev", batch)
    assert store.get_features("user", ["u0"], features=["n"])["n"].iloc[0] == before + 5
