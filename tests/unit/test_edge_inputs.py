"""Edge inputs, Ray-free parts: each either works exactly or is refused
with a RayfsError naming the culprit, and nothing is written.

Pinned: a where clause reads a batch's all-NaN float column as the all-null column it is (a batch whose
column is all NaN says nothing of the column's type, so a where clause comparing it with a string is not a
type mismatch); a WAL record refused with a DefinitionError (e.g. a where clause's SqlError) is set aside on
replay like a SchemaError, never blocking the store; float entity keys beyond 2**53 or not finite are refused
in every column form; an observation batch with repeated column names is refused; a config that is not a
path is an OptionError; event files given as something other than paths are a FileFormatError.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

import rayfs
from rayfs.engine import columns as C
from rayfs.errors import OptionError, SchemaError, SqlError
from rayfs.model.predicate import Predicate
from rayfs.storage import wal as W
from rayfs.storage.log import SegmentedLog
from rayfs.storage.observations import ObservationStreams

NAN_FLOATS = np.array([np.nan, np.nan, np.nan])
NONES = np.array([None, None, None], dtype=object)
PREDICATES = [
    "x = 'q'", "x <> 'q'", "x > 0", "x <= -1.5", "x = TRUE", "x IS NULL", "x IS NOT NULL", "NOT (x > 0)",
    "x > 0 OR y = 1", "x > 0 AND y = 1", "x IN ('a', 'b')", "x NOT IN (1, 2)", "x BETWEEN 0 AND 9",
    "x + 1 > 0", "x LIKE 'q%'", "x = x", "NOT (x IS NULL) OR y > 0",
]


@pytest.mark.parametrize("text", PREDICATES)
def test_an_all_nan_float_column_is_read_like_an_all_none_column(text):
    y = np.array([1.0, 0.0, 1.0])
    p = Predicate.parse(text, feature="f")
    assert p.evaluate({"x": NAN_FLOATS, "y": y}, 3).tolist() == p.evaluate({"x": NONES, "y": y}, 3).tolist()


@pytest.mark.parametrize("text, want", [
    ("x = 'q'", [False] * 3), ("x IS NULL", [True] * 3), ("x IS NOT NULL", [False] * 3),
    ("x > 0 OR y = 1", [True, False, True]), ("NOT (x IS NULL) OR y > 0", [True, False, True]),
])
def test_an_all_nan_float_column_is_null_in_every_row(text, want):
    y = np.array([1.0, 0.0, 1.0])
    assert Predicate.parse(text, feature="f").evaluate({"x": NAN_FLOATS, "y": y}, 3).tolist() == want


def test_a_float_column_with_a_value_still_has_its_type_checked():
    with pytest.raises(SqlError, match="'f'.*x = 'q'"):
        Predicate.parse("x = 'q'", feature="f").evaluate({"x": np.array([np.nan, 1.0])}, 2)
    assert Predicate.parse("x > 0", feature="f").evaluate({"x": np.array([np.nan, 1.0])}, 2).tolist() == [False, True]
    assert Predicate.parse("x IS NULL", feature="f").evaluate({"x": np.array([np.nan, 1.0])}, 2).tolist() == [
        True, False]


def _rejected(store: str) -> list[dict]:
    log = SegmentedLog(os.path.join(store, W.REJECTED_DIR), durability="none")
    try:
        return [r for _, r in log.read(0)]
    finally:
        log.close()


def test_a_wal_record_refused_with_a_definition_error_is_set_aside_not_replayed_forever(tmp_path):
    store = str(tmp_path)
    dead = W.WriteAheadLog(store, "none")
    records = [{"stream": "ev", "batch_id": f"b{i}", "cols": {"n": i}} for i in range(3)]
    for r in records:
        dead.append(r)
    dead.log.close()
    dead._owner.close()  # the writer is gone: its lock is free, its files stay
    got = []

    def send(record: dict) -> None:
        if record["batch_id"] == "b1":  # what a shard raises for a where clause it cannot evaluate
            raise SqlError("feature 'nq': type mismatch in \"x = 'q'\"")
        got.append(record["batch_id"])

    with pytest.warns(RuntimeWarning, match="b1.*wal-rejected"):
        assert W.recover_orphans(store, send) == 3
    assert got == ["b0", "b2"] and _rejected(store) == [records[1]]
    assert W.recover_orphans(store, send) == 0  # nothing left to replay: the store opens


def test_the_refused_errors_are_the_bad_input_classes():
    assert all(issubclass(e, rayfs.RayfsError) for e in W.REFUSED)
    assert issubclass(rayfs.TimestampError, W.REFUSED) and issubclass(rayfs.SqlError, W.REFUSED)
    for transient in (rayfs.StoreClosedError, rayfs.StoreOpenError, rayfs.LogCorruptionError, ConnectionError):
        assert not issubclass(transient, W.REFUSED), transient


@pytest.mark.parametrize("keys, needle", [
    (pd.Series([2.0**63, "a"], dtype=object), "2**53"),
    (pd.Series([1e30], dtype=object), "2**53"),
    (pd.Series([-(2.0**60), 1], dtype=object), "2**53"),
    (pd.Series([np.inf, "a"], dtype=object), "inf"),
    (pd.Series([1.0, np.inf]), "inf"),
    (pd.Series([1.0, -np.inf, np.nan]), "inf"),
    (pd.Series([2.0**63]), "2**53"),
])
def test_float_keys_that_are_not_exact_integers_are_refused_in_every_column_form(keys, needle):
    with pytest.raises(SchemaError, match=rf"'k'.*{needle.replace('*', '[*]')}"):
        C.key_column(keys, what="column 'k'")


def test_float_keys_within_2_53_become_ints_in_every_column_form():
    assert C.key_column(pd.Series([2.0**53, "a", None], dtype=object), what="k").tolist() == [2**53, "a", None]
    assert C.key_column(pd.Series([-3.0, 1.0]), what="k").tolist() == [-3, 1]


def test_an_observation_batch_with_repeated_column_names_is_refused_and_nothing_written(tmp_path):
    obs = ObservationStreams(str(tmp_path), "none")
    for cols in (["k", "ts", "y", "y"], ["k", "ts", "ts"], ["k", "k", "ts"]):
        rows = pd.DataFrame([["a", 1.7e9, 1.7e9, 1][:len(cols)]], columns=cols)
        with pytest.raises(SchemaError, match=r"observation stream 'lab'.*duplicate column names"):
            obs.append("lab", rows, keys={"k"})
    with pytest.raises(rayfs.UnknownStreamError):
        obs.read("lab")
    assert obs.append("lab", pd.DataFrame({"k": ["a"], "ts": [1.7e9], "y": [1]}), keys={"k"}) == 1


@pytest.mark.parametrize("config", [{"store": {"path": "x"}}, 3, None])
def test_a_config_that_is_not_a_path_is_an_option_error(config):
    with pytest.raises(OptionError, match=f"path of a TOML file.*not {type(config).__name__}"):
        rayfs.load_config(config)


@pytest.mark.parametrize("paths", [None, 3, [3], [None, "e.csv"]])
def test_event_files_that_are_not_paths_are_an_option_error(paths):
    with pytest.raises(rayfs.OptionError, match="paths(:| must be).* file, directory or glob pattern"):
        rayfs.iter_batches(paths)


@pytest.mark.parametrize("dtype", ["Int64", "UInt64", "int64[pyarrow]"])
def test_nullable_integer_keys_with_nulls_stay_exact_beyond_2_53(dtype):
    big = 2**63 - 1
    keys = pd.Series([big, None, 7], dtype=dtype)
    assert C.key_column(keys, what="column 'k'").tolist() == [big, None, 7]


@pytest.mark.parametrize("dtype", ["UInt64", "uint64[pyarrow]"])
def test_nullable_unsigned_keys_beyond_int64_are_refused_naming_the_row(dtype):
    with pytest.raises(SchemaError, match="'k'.*18446744073709551615 at row 1"):
        C.key_column(pd.Series([None, 2**64 - 1], dtype=dtype), what="column 'k'")
