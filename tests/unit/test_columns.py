"""Column normalisation: Arrow-backed string columns (one chunk or many) encode exactly as object columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rayfs.engine.columns import decode, encode, key_column, key_kind, value_column

VALUES = [["a", None, "b", "a"], ["", "é", None], [None, None], ["x"]]


@pytest.mark.parametrize("coded", [False, True])
@pytest.mark.parametrize("normalise", [key_column, value_column])
def test_multi_chunk_arrow_strings_encode_as_object_columns(normalise, coded):
    parts = VALUES
    flat = [v for p in parts for v in p]
    series = pd.concat([pd.Series(p, dtype="string[pyarrow]") for p in parts], ignore_index=True)
    assert isinstance(pa.array(series.array), pa.ChunkedArray) or len(parts) == 1
    got = normalise(series, what="c", coded=coded)
    want = normalise(pd.Series(flat, dtype=object), what="c")
    assert got.tolist() == want.tolist()
    assert encode(got) == encode(want)
    assert decode(encode(got)).tolist() == flat
    if normalise is key_column:
        assert key_kind(got) == key_kind(want) == "str"


def test_all_null_arrow_strings():
    s = pd.Series([None, None], dtype="string[pyarrow]")
    assert key_column(s, what="k", coded=True).tolist() == [None, None]
    assert key_kind(key_column(s, what="k", coded=True)) is None
    assert np.isnan(value_column(s, what="v", coded=True)).all()


@pytest.mark.parametrize("keys", [[2**64, None], [2**64, 5], [-(2**63) - 1, "a"]])
def test_integer_keys_beyond_64_bits_are_a_schema_error_naming_the_column(keys):
    from rayfs.errors import SchemaError

    with pytest.raises(SchemaError, match="user.*does not fit in 64 bits"):
        key_column(pd.Series(keys, dtype=object), what="column 'user'")


def test_extreme_64_bit_integer_keys_are_kept():
    keys = [2**63 - 1, -(2**63), None]
    assert key_column(pd.Series(keys, dtype=object), what="k").tolist() == keys
