"""Inputs the validation layer must refuse cleanly (a RayfsError naming the culprit) or accept exactly.

The model, engine and storage halves of the edge cases: timestamps out of range or of unusual types,
windows too long for int64 arithmetic, names too long for snapshot keys, uint64 and non-UTF-8 keys,
feature names that would overwrite result columns, predicates over the timestamp, and observation
appends missing their timestamp. The same cases through the public API are in tests/ray/test_edge_cases.py.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rayfs.engine.columns import concat, key_column, to_frame, value_column
from rayfs.errors import DefinitionError, SchemaError, TimestampError, WindowError
from rayfs.model.definitions import MAX_NAME_BYTES, Feature, Stream, check_name
from rayfs.model.sql import features_from_sql
from rayfs.model.timeutil import MAX_US, MAX_WINDOW_US, MIN_US, NEVER, parse_window, to_micros
from rayfs.storage.catalog import Catalog
from rayfs.storage.observations import ObservationStreams

T = pd.Timestamp("2024-01-01 12:00:00")
T_US = 1704110400000000


# ------------------------------------------------------------------------------------------- timestamps
@pytest.mark.parametrize("values, fragment", [
    ([T.value], "nanoseconds"),                               # .astype("int64") of datetime64[ns]
    (np.array([T.value // 1000]), "microseconds"),
    (pd.Series([T.value // 10**6]), "milliseconds"),
    ([1e300], "outside the accepted range"),
    (np.array([2**64 - 1], dtype=np.uint64), "outside the accepted range"),
    ([-1e11], "outside the accepted range"),
    (np.array(["1677-12-31"], dtype="datetime64[D]"), "outside the accepted range"),
    (np.array(["300000-01-01"], dtype="datetime64[D]"), "outside the accepted range"),
    (np.array(["2262"], dtype="datetime64[Y]"), "outside the accepted range"),
    ([dt.datetime(1, 1, 1)], "outside the accepted range"),
    ([np.datetime64("2024-01-01", "ns"), np.datetime64(10**17, "s")], "row 1"),
    (pd.Series([T, 5], dtype=object), "row 1"),
    (pd.Series([5, T], dtype=object), "row 1"),
    (pd.Series([T, True], dtype=object), "row 1"),
    (pd.Series([True]), "boolean"),
    (pd.Series([1.0, np.inf]), "row 1"),
    (pd.Series([1.0, None, 2.0]), "row 1"),
    (pd.Series([T, pd.NaT]), "row 1"),
    (pd.Series(["2024-01-01"], dtype=object), "str"),
])
def test_bad_timestamps_name_the_column_and_row(values, fragment):
    with pytest.raises(TimestampError, match="column 'ts'") as exc:
        to_micros(values, what="column 'ts'")
    assert fragment in str(exc.value)


def test_accepted_range_bounds():
    lo = np.array([MIN_US, MAX_US - 1], dtype="datetime64[us]")
    assert to_micros(lo).tolist() == [MIN_US, MAX_US - 1]
    with pytest.raises(TimestampError):
        to_micros(np.array([MAX_US], dtype="datetime64[us]"))
    assert to_micros([MIN_US // 10**6, 2**33]).tolist() == [MIN_US, 2**33 * 10**6]
    assert to_micros(np.array([1, 2], dtype=np.uint64)).tolist() == [10**6, 2 * 10**6]


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC", "Asia/Tokyo"])
def test_arrow_and_aware_timestamps_of_every_unit(unit, tz):
    stamp = T if tz is None else T.tz_localize("UTC").tz_convert(tz)
    arrow = pd.Series([stamp, stamp + pd.Timedelta(seconds=1)], dtype=pd.ArrowDtype(pa.timestamp(unit, tz=tz)))
    assert to_micros(arrow).tolist() == [T_US, T_US + 10**6]
    aware = pd.Series([stamp]).astype(f"datetime64[{unit}]" if tz is None else f"datetime64[{unit}, {tz}]")
    assert to_micros(aware).tolist() == [T_US]
    table = pa.table({"ts": pa.array([stamp], type=pa.timestamp(unit, tz=tz))})
    assert to_micros(table.to_pandas(types_mapper=pd.ArrowDtype)["ts"]).tolist() == [T_US]


def test_sub_microsecond_times_are_floored_like_pandas():
    ns = np.array([-1500, 1500], dtype="datetime64[ns]")
    assert to_micros(ns).tolist() == pd.Series(ns).astype("datetime64[us]").to_numpy().astype(np.int64).tolist()
    arrow = pd.Series(ns).astype(pd.ArrowDtype(pa.timestamp("ns")))
    assert to_micros(arrow).tolist() == [-2, 1]


# ------------------------------------------------------------------------------------------- windows
def test_windows_are_bounded_so_time_arithmetic_stays_in_int64():
    for w in ("999999999d", dt.timedelta(days=999_999_999), f"{MAX_WINDOW_US + 1}us"):
        with pytest.raises(WindowError, match="longest accepted"):
            parse_window(w, feature="f")
    assert parse_window(f"{MAX_WINDOW_US}us") == MAX_WINDOW_US
    assert MIN_US - MAX_WINDOW_US > NEVER and MAX_US + MAX_WINDOW_US < -NEVER
    with pytest.raises(WindowError, match="'f'"):
        Feature(name="f", stream="ev", entity="k", agg="count", window="999999999d")


# ------------------------------------------------------------------------------------------- names
def test_names_are_limited_in_bytes():
    assert check_name("a" * MAX_NAME_BYTES, "feature")
    with pytest.raises(DefinitionError, match=f"limited to {MAX_NAME_BYTES} bytes"):
        check_name("a" * (MAX_NAME_BYTES + 1), "feature")
    with pytest.raises(DefinitionError, match="feature name"):
        Feature(name="f" * 600, stream="ev", entity="k", agg="count")
    with pytest.raises(DefinitionError, match="stream name"):
        Stream(name="s" * 600, entities=("k",), timestamp="ts")
    with pytest.raises(DefinitionError, match="stream 's': entities must be a field name or a list of them, not int"):
        Stream(name="s", entities=5, timestamp="ts")
    with pytest.raises(DefinitionError, match="feature 'f': tags must be non-empty strings, got 5"):
        Feature(name="f", stream="ev", entity="k", agg="count", tags=5)
    # a snapshot key built from the longest names fits LMDB's 511 bytes
    assert len(f"keys/{'s' * MAX_NAME_BYTES}/{'e' * MAX_NAME_BYTES}".encode()) < 511
    assert len(f"state/{'f' * MAX_NAME_BYTES}@{2**63}".encode()) < 511


# ------------------------------------------------------------------------------------------- keys
@pytest.mark.parametrize("series", [
    pd.Series(np.array([1, 2**64 - 1], dtype=np.uint64)),
    pd.Series([1, 2**64 - 1], dtype="UInt64"),
    pd.Series([1, 2**64 - 1], dtype=pd.ArrowDtype(pa.uint64())),
    pd.Series([np.uint64(1), np.uint64(2**64 - 1)], dtype=object),
    pd.Series([1, 2**64 - 1], dtype=object),
])
def test_uint64_keys_beyond_int64_are_refused(series):
    with pytest.raises(SchemaError, match="column 'k'"):
        key_column(series, what="column 'k'")


def test_uint64_keys_that_fit_int64_are_kept_exactly():
    big = 2**63 - 1
    for series in (pd.Series(np.array([0, big], dtype=np.uint64)), pd.Series([0, big], dtype="UInt64"),
                   pd.Series([0, big], dtype=pd.ArrowDtype(pa.uint64()))):
        assert key_column(series, what="k").tolist() == [0, big]
    values = value_column(pd.Series(np.array([1, 2**64 - 1], dtype=np.uint64)), what="v")
    assert values.tolist() == [1.0, float(2**64 - 1)]  # numbers, not wrapped to -1


@pytest.mark.parametrize("make", [
    lambda: key_column(pd.Series(["a", "\ud800"], dtype=object), what="column 'k'"),
    lambda: key_column(pd.Series(["a", "\udfff", None], dtype=object), what="column 'k'"),
    lambda: key_column(pd.Series([1, "\ud800"], dtype=object), what="column 'k'"),
    lambda: value_column(pd.Series(["a", "\ud800"], dtype=object), what="column 'k'"),
    lambda: to_frame({"k": ["a", "\ud800"]}, what="column 'k'"),
    lambda: to_frame([{"k": "a"}, {"k": "\ud800"}], what="stream 'ev'"),
])
def test_lone_surrogates_are_refused_naming_the_column(make):
    with pytest.raises(SchemaError, match="'k'.*row 1.*surrogate"):
        make()


# ------------------------------------------------------------------------------------------- features
@pytest.fixture
def catalog(tmp_path) -> Catalog:
    cat = Catalog(str(tmp_path), 1)
    cat.streams["ev"] = Stream(name="ev", entities=("k", "j"), timestamp="ts")
    return cat


@pytest.mark.parametrize("name", ["k", "j", "ts"])
def test_feature_named_like_an_entity_or_the_timestamp_is_refused(catalog, name):
    with pytest.raises(DefinitionError, match=f"feature '{name}'.*stream 'ev'"):
        catalog.add_feature(Feature(name=name, stream="ev", entity="k", agg="count"), "now")
    sql = f"SELECT k, MAX(v) AS {name} FROM ev GROUP BY k"
    for f in features_from_sql(sql, streams=catalog.streams):
        with pytest.raises(DefinitionError, match=f"feature '{name}'"):
            catalog.check_feature(f)
    assert catalog.features == {}


def test_predicate_over_the_timestamp_is_refused_clearly(catalog):
    catalog.schema["ev"] = {"v": "num"}
    f = Feature(name="late", stream="ev", entity="k", agg="count", where="ts > 1700000000")
    with pytest.raises(DefinitionError, match="timestamp column 'ts'.*cannot use event times"):
        catalog.check_feature(f)


# ------------------------------------------------------------------------------------------- observations
def test_observation_append_without_its_timestamp_is_refused_and_writes_nothing(tmp_path):
    obs = ObservationStreams(str(tmp_path), "sync")
    assert obs.append("lab", {"k": "a", "ts": T, "y": 0, "when": T}) == 1
    before = obs.read("lab")
    for bad, error in (({"k": "a", "y": 0}, SchemaError), ({"k": "a", "ts": None}, TimestampError),
                       ({"k": "a", "ts": [T, None]}, TimestampError), ({"k": "a", "ts": 1.5}, SchemaError),
                       ({"k": np.uint64(2**64 - 1), "ts": T}, SchemaError),
                       ({"k": "a", "ts": T, "\udc00": 1}, SchemaError)):
        with pytest.raises(error, match="'lab'"):
            obs.append("lab", bad)
    pd.testing.assert_frame_equal(obs.read("lab"), before)
    obs.close()
    obs = ObservationStreams(str(tmp_path), "sync")  # a fresh process sees the same, and may append
    pd.testing.assert_frame_equal(obs.read("lab"), before)
    assert obs.append("lab", {"k": "b", "ts": T + pd.Timedelta(seconds=1)}) == 1  # y and when absent
    out = obs.read("lab")
    assert out["k"].tolist() == ["a", "b"]
    assert out["when"].isna().tolist() == [False, True] and out["when"].dtype.kind == "M"
    assert np.isnan(out["y"].iloc[1])
    assert to_micros(out["ts"]).tolist() == [T_US, T_US + 10**6]


def test_observation_stream_with_float_times(tmp_path):
    obs = ObservationStreams(str(tmp_path), "sync")
    obs.append("lab", {"k": "a", "ts": 1.5})
    with pytest.raises(SchemaError, match="timestamp column 'ts'"):
        obs.append("lab", {"k": "a", "y": 0})
    obs.append("lab", {"k": "a", "ts": 2, "when": T})
    obs.append("lab", {"k": "a", "ts": 3, "when": None})
    out = obs.read("lab")
    assert to_micros(out["ts"]).tolist() == [1_500_000, 2_000_000, 3_000_000]
    assert out["when"].isna().tolist() == [True, False, True]


def test_concat_fills_absent_datetime_columns_with_nat():
    a = {"t": np.array([1], dtype="datetime64[us]")}
    b = {"x": np.array([1.0])}
    c = {"t": np.array([np.nan])}  # a column all null in one batch
    out = concat([a, b, c])
    assert out["t"].dtype == np.dtype("datetime64[us]") and np.isnat(out["t"]).tolist() == [False, True, True]
    with pytest.raises(SchemaError, match="'t'"):
        concat([a, {"t": np.array([2.0])}])
