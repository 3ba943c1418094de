"""Edge cases through the public API: each either works exactly or is refused with a RayfsError naming the
culprit, with nothing applied, and the store stays usable (reads, training sets, close and reopen).

One store per module (shards=1, as in the reports); every test uses its own streams.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import rayfs

T = pd.Timestamp("2024-01-01 12:00:00")
S = pd.Timedelta(seconds=1)


@pytest.fixture(scope="module")
def store(ray_session, tmp_path_factory):
    path = tmp_path_factory.mktemp("edge") / "s"
    with rayfs.FeatureStore.open(path, shards=1) as st:
        yield st


def stream(st, name: str, *features: tuple[str, str, str | None]) -> None:
    """Register stream ``name`` (entity k, time ts) and features ``(feature name, agg, column)``."""
    st.register_stream(name, entities=["k"], timestamp="ts")
    for fname, agg, column in features:
        st.register_feature(rayfs.Feature(name=fname, stream=name, entity="k", agg=agg, column=column))


def counts(st, feature: str, keys) -> list:
    return st.get_features("k", keys, features=[feature])[feature].tolist()


# 1 -------------------------------------------------------------------------------------------------------
def test_observation_append_without_timestamp_is_refused_and_the_stream_keeps_working(store):
    stream(store, "ev1", ("ev1_n", "count", None))
    store.ingest("ev1", {"k": ["a", "a"], "ts": [T, T + S]})
    store.append_observation("lab1", {"k": "a", "ts": T + 5 * S, "y": 0, "when": T})
    with pytest.raises(rayfs.SchemaError, match="'lab1'.*timestamp column 'ts'"):
        store.append_observation("lab1", {"k": "a", "y": 0})
    with pytest.raises(rayfs.TimestampError, match="'lab1'.*row 1"):
        store.append_observation("lab1", pd.DataFrame({"k": ["a", "a"], "ts": [T, None]}))
    store.append_observation("lab1", {"k": "a", "ts": T + S / 2})  # y and the datetime label absent
    obs = store.observations("lab1")
    assert len(obs) == 2 and obs["when"].isna().tolist() == [False, True]
    assert store.training_set("lab1", features=["ev1_n"])["ev1_n"].tolist() == [2, 1]
    # epoch-second times: a missing time used to turn into NaN and a TimestampError on every read
    store.append_observation("lab1f", {"k": "a", "ts": (T + 5 * S).timestamp()})
    with pytest.raises(rayfs.SchemaError, match="'lab1f'"):
        store.append_observation("lab1f", {"k": "a", "y": 0})
    assert store.training_set("lab1f", features=["ev1_n"])["ev1_n"].tolist() == [2]


# 2 -------------------------------------------------------------------------------------------------------
def test_long_names_are_refused_at_registration_and_the_longest_accepted_survive_snapshots(tmp_path):
    long = "f" * 600
    path = tmp_path / "s"
    with rayfs.FeatureStore.open(path, shards=1) as st:
        st.register_stream("ev2", entities=["k"], timestamp="ts")
        with pytest.raises(rayfs.DefinitionError, match="200 bytes"):
            st.register_feature(rayfs.Feature(name=long, stream="ev2", entity="k", agg="count"))
        with pytest.raises(rayfs.DefinitionError, match="200 bytes"):
            st.register_sql(f"SELECT k, COUNT(*) AS {long} FROM ev2 GROUP BY k")
        with pytest.raises(rayfs.DefinitionError, match="200 bytes"):
            st.register_stream("s" * 300, entities=["k"], timestamp="ts")
        s200, e200, f200 = "s" * 200, "e" * 200, "f" * 200
        st.register_stream(s200, entities=[e200], timestamp="ts")
        st.register_feature(rayfs.Feature(name=f200, stream=s200, entity=e200, agg="count"))
        st.register_feature(rayfs.Feature(name=f200, stream=s200, entity=e200, agg="count", window="1d"))
        assert set(st.features) >= {f200}
        st.ingest(s200, {e200: ["a", "b", "a"], "ts": [T, T, T + S]})
        st.snapshot()
    with rayfs.FeatureStore.open(path, shards=1) as st:
        got = st.get_features(e200, ["a", "b"], features=[f200, f"{f200}@1"])
        assert got[f200].tolist() == [2, 1] and got[f"{f200}@1"].tolist() == [2, 1]


# 4 -------------------------------------------------------------------------------------------------------
def test_uint64_keys_beyond_int64_are_refused_and_those_that_fit_work(store):
    stream(store, "ev4", ("ev4_n", "count", None))
    big = pd.DataFrame({"k": np.array([2**64 - 1, 5], dtype=np.uint64), "ts": [T, T]})
    with pytest.raises(rayfs.SchemaError, match="'k'.*18446744073709551615"):
        store.ingest("ev4", big)
    assert counts(store, "ev4_n", [-1, 5]) == [0, 0]  # nothing applied
    fits = pd.DataFrame({"k": np.array([2**63 - 1, 5, 5], dtype=np.uint64), "ts": [T, T, T + S]})
    store.ingest("ev4", fits)
    assert counts(store, "ev4_n", [2**63 - 1, 5, -1]) == [1, 2, 0]
    obs = pd.DataFrame({"k": np.array([2**64 - 1], dtype=np.uint64), "ts": [T + 9 * S]})
    with pytest.raises(rayfs.SchemaError, match="'k'"):
        store.training_set(obs, features=["ev4_n"])
    with pytest.raises(rayfs.SchemaError, match="'k'"):
        store.append_observation("lab4", obs)
    obs = pd.DataFrame({"k": np.array([2**63 - 1, 5], dtype=np.uint64), "ts": [T + 9 * S, T + 9 * S]})
    assert store.training_set(obs, features=["ev4_n"])["ev4_n"].tolist() == [1, 2]


# 5 -------------------------------------------------------------------------------------------------------
def test_feature_named_like_the_entity_or_timestamp_is_refused(store, tmp_path):
    stream(store, "ev5")
    for name in ("k", "ts"):
        with pytest.raises(rayfs.DefinitionError, match=f"feature '{name}'.*stream 'ev5'"):
            store.register_feature(rayfs.Feature(name=name, stream="ev5", entity="k", agg="count"))
    with pytest.raises(rayfs.DefinitionError, match="feature 'k'"):
        store.register_sql("SELECT k, COUNT(*) AS k FROM ev5 GROUP BY k")
    with pytest.raises(rayfs.DefinitionError, match="feature 'ts'"):
        store.register_sql("SELECT k, COUNT(*) AS n5, MAX(v) AS ts FROM ev5 GROUP BY k")
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\npath = "{store.path}"\n'
                      '[[streams]]\nname = "ev5"\nentities = ["k"]\ntimestamp = "ts"\n'
                      '[[features]]\nname = "ts"\nstream = "ev5"\nentity = "k"\nagg = "count"\n')
    with pytest.raises(rayfs.DefinitionError, match="feature 'ts'"):
        store.apply(config)
    assert not any(f.stream == "ev5" for f in store.features.values())


# 6 -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("huge", [[1e308, 1e308], [1e160, -1e160]])
def test_one_entitys_huge_values_leave_other_entities_alone(store, huge):
    name = f"ev6_{len(store.streams)}"
    aggs = ("sum", "mean", "stddev", "variance")
    stream(store, name, *((f"{name}_{a}", a, "v") for a in aggs))
    store.ingest(name, pd.DataFrame({"k": ["a", "a", "b", "b", "b"], "ts": [T, T + S, T, T + S, T + 2 * S],
                                     "v": huge + [1.0, 2.0, 4.0]}))
    feats = [f"{name}_{a}" for a in aggs]
    online = store.get_features("k", ["b"], features=feats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        train = store.training_set(pd.DataFrame({"k": ["b", "a", "b"], "ts": [T + 3 * S, T + 3 * S, T + 2 * S]}),
                                   features=feats)
    b = np.array([1.0, 2.0, 4.0])
    want = {"sum": b.sum(), "mean": b.mean(), "stddev": b.std(ddof=1), "variance": b.var(ddof=1)}
    for a, f in zip(aggs, feats, strict=True):
        assert train[f].iloc[0] == pytest.approx(want[a], rel=1e-15), f
        assert train[f].iloc[0] == pytest.approx(online[f].iloc[0], rel=1e-15), f
        assert train[f].iloc[2] == pytest.approx({"sum": 3.0, "mean": 1.5, "stddev": 0.5**0.5,
                                                  "variance": 0.5}[a], rel=1e-15), f
    # The huge entity itself: the training set and the online value agree (0 for equal huge values).
    online_a = store.get_features("k", ["a"], features=feats)
    for f in feats:
        np.testing.assert_array_equal(train[f].iloc[1], online_a[f].iloc[0], err_msg=f)


# 8 -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ts, fragment", [
    ([T.value, (T + S).value], "nanoseconds"),
    ([1e300, 1.0], "outside the accepted range"),
    (pd.Series([T, 1.7e9], dtype=object), "row 1"),
    (pd.Series([T, True], dtype=object), "row 1"),
    (np.array(["1000-01-01", "2024-01-01"], dtype="datetime64[D]"), "row 0"),
])
def test_out_of_range_and_mixed_timestamps_are_refused(store, ts, fragment):
    name = f"ev8_{len(store.streams)}"
    stream(store, name, (f"{name}_n", "count", None))
    with pytest.raises(rayfs.TimestampError, match=f"'ts'.*{fragment}"):
        store.ingest(name, pd.DataFrame({"k": ["a", "b"], "ts": ts}))
    assert counts(store, f"{name}_n", ["a", "b"]) == [0, 0]
    with pytest.raises(rayfs.TimestampError, match=f"'ts'.*{fragment}"):
        store.training_set(pd.DataFrame({"k": ["a", "b"], "ts": ts}), features=[f"{name}_n"])
    with pytest.raises(rayfs.TimestampError, match=fragment):
        store.append_observation(f"lab{name}", pd.DataFrame({"k": ["a", "b"], "ts": ts}))


# 10 ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_aware_and_arrow_timestamps_are_accepted(store, unit):
    name = f"ev10_{unit}"
    stream(store, name, (f"{name}_n", "count", None), (f"{name}_last", "last", "v"))
    times = [T, T + S, T + 2 * S]
    utc = [t.tz_localize("UTC") for t in times]
    tokyo = [t.tz_convert("Asia/Tokyo") for t in utc]
    forms = [pd.Series(utc, dtype=pd.ArrowDtype(pa.timestamp(unit, tz="UTC"))),
             pd.Series(tokyo, dtype=pd.ArrowDtype(pa.timestamp(unit, tz="Asia/Tokyo"))),
             pd.Series(times, dtype=pd.ArrowDtype(pa.timestamp(unit))),
             pd.Series(tokyo).astype(f"datetime64[{unit}, Asia/Tokyo]")]
    for i, ts in enumerate(forms):
        store.ingest(name, pd.DataFrame({"k": ["a", "a", "b"], "ts": ts, "v": [float(i), float(i), 9.0]}))
    assert counts(store, f"{name}_n", ["a", "b"]) == [8, 4]
    parquet = pa.table({"k": ["a", "b"], "ts": pa.array([utc[1], utc[2] + S], type=pa.timestamp(unit, tz="UTC"))})
    obs = parquet.to_pandas(types_mapper=pd.ArrowDtype)  # what read_parquet(dtype_backend="pyarrow") gives
    got = store.training_set(obs, features=[f"{name}_n"])
    assert got[f"{name}_n"].tolist() == [4, 4]  # strictly before: a's events at T, not those at T + S
    store.append_observation(f"lab{unit}", obs)
    assert store.training_set(f"lab{unit}", features=[f"{name}_n"])[f"{name}_n"].tolist() == [4, 4]


# 11 ------------------------------------------------------------------------------------------------------
def test_windows_too_long_for_int64_are_refused(store):
    stream(store, "ev11")
    with pytest.raises(rayfs.WindowError, match="'w11'"):
        store.register_feature(rayfs.Feature(name="w11", stream="ev11", entity="k", agg="count",
                                             window="999999999d"))
    with pytest.raises(rayfs.WindowError):
        store.register_sql("SELECT k, COUNT(*) AS w11 FROM ev11 GROUP BY k", window="999999999d")
    store.register_feature(rayfs.Feature(name="w11", stream="ev11", entity="k", agg="count", window="1000000d"))
    store.ingest("ev11", {"k": ["a"], "ts": [pd.Timestamp("1700-01-01")]})
    obs = pd.DataFrame({"k": ["a", "a"], "ts": [pd.Timestamp("1700-01-02"), pd.Timestamp("2261-01-01")]})
    assert store.training_set(obs, features=["w11"])["w11"].tolist() == [1, 1]
    assert counts(store, "w11", ["a"]) == [1]


# 12 ------------------------------------------------------------------------------------------------------
def test_lone_surrogate_keys_are_refused_naming_the_column(store):
    stream(store, "ev12", ("ev12_n", "count", None))
    bad = pd.DataFrame({"k": pd.Series(["a", "\ud800"], dtype=object), "ts": [T, T]})
    with pytest.raises(rayfs.SchemaError, match="'k'.*row 1.*surrogate"):
        store.ingest("ev12", bad)
    with pytest.raises(rayfs.SchemaError, match="'k'.*surrogate"):
        store.ingest("ev12", {"k": ["a", "\ud800"], "ts": [T, T]})
    assert counts(store, "ev12_n", ["a"]) == [0]
    with pytest.raises(rayfs.SchemaError, match="surrogate"):
        store.get_features("k", ["\ud800"], features=["ev12_n"])
    with pytest.raises(rayfs.SchemaError, match="'k'.*surrogate"):
        store.training_set(bad, features=["ev12_n"])


def test_predicate_on_the_timestamp_column_is_refused_clearly(store):
    stream(store, "ev12w")
    store.ingest("ev12w", {"k": ["a"], "ts": [T], "v": [1.0]})
    with pytest.raises(rayfs.DefinitionError, match="timestamp column 'ts'"):
        store.register_sql("SELECT k, COUNT(*) AS late FROM ev12w WHERE ts > 1700000000 GROUP BY k")
    with pytest.raises(rayfs.DefinitionError, match="timestamp column 'ts'"):
        store.register_feature(rayfs.Feature(name="late", stream="ev12w", entity="k", agg="count",
                                             where="v > 0 AND ts > 1700000000"))


# 13 ------------------------------------------------------------------------------------------------------
def test_a_feature_named_like_an_observation_column_is_refused_not_written_over_it(store):
    store.register_stream("ev13", entities=["k13"], timestamp="ts")
    for name in ("clicks13", "n13"):
        store.register_feature(rayfs.Feature(name=name, stream="ev13", entity="k13", agg="count"))
    store.ingest("ev13", {"k13": ["a", "a"], "ts": [T, T + S]})
    obs = pd.DataFrame({"k13": ["a"], "ts": [T + 5 * S], "clicks13": [7]})
    with pytest.raises(rayfs.SchemaError, match="column 'clicks13' and feature 'clicks13' is requested.*Rename"):
        store.training_set(obs, ["n13", "clicks13"])
    with pytest.raises(rayfs.SchemaError, match="column 'clicks13' and features=None .*'clicks13'.*Rename"):
        store.training_set(obs)
    store.append_observation("lab13", obs)
    for output in ("pandas", "arrow"):
        with pytest.raises(rayfs.SchemaError, match="'clicks13'"):
            store.training_set("lab13", output=output)
    got = store.training_set("lab13", ["n13"])
    assert got["clicks13"].tolist() == [7] and got["n13"].tolist() == [2]
    got = store.training_set(obs.rename(columns={"clicks13": "label"}))
    assert got["label"].tolist() == [7] and got["clicks13"].tolist() == [2] and got["n13"].tolist() == [2]
