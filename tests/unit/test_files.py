"""rayfs.sources.files: batch-wise reading of Parquet / CSV / JSON lines files, and write_table."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayfs.errors import FileFormatError, OptionError, SchemaError
from rayfs.model.timeutil import to_micros
from rayfs.sources.files import (
    BatchReader,
    count_rows,
    format_of,
    iter_batches,
    resolve_paths,
    total_bytes,
    write_table,
)

EVENTS = pd.DataFrame({
    "user": ["u1", "u2", "u1", None, "u3"],
    "post": [10, 11, 10, 12, 13],
    "score": [1.0, np.nan, 3.5, 0.25, -2.0],
    "ts": [1700000000, 1700000100, 1700000200, 1700000300, 1700000400],
})


def rows(batches) -> pd.DataFrame:
    """All batches as one DataFrame (batches may differ in inferred types, e.g. JSON lines)."""
    frames = [b if isinstance(b, pd.DataFrame) else b.to_pandas() for b in batches]
    return pd.concat(frames, ignore_index=True)


def nones(values) -> list:
    return [None if pd.isna(v) else v for v in values]


def assert_events_equal(got: pd.DataFrame, want: pd.DataFrame = EVENTS) -> None:
    assert list(got.columns) == list(want.columns)
    for c in want.columns:
        g, w = got[c].tolist(), want[c].tolist()
        assert [None if pd.isna(x) else x for x in g] == [None if pd.isna(x) else x for x in w], c


def big_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"user": np.arange(n) % 1000, "x": np.arange(n) * 0.5, "ts": np.arange(n)})


# ---------------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["e.parquet", "e.pq", "e.csv", "e.tsv", "e.jsonl", "e.ndjson", "e.json",
                                  "e.csv.gz", "e.jsonl.gz", "e.tsv.bz2"])
def test_round_trip_each_format(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert write_table(EVENTS, path) == 5
    batches = list(iter_batches(path))
    assert len(batches) == 1 and isinstance(batches[0], pa.Table)
    assert_events_equal(rows(batches))


def test_formats_by_hand_written_files(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("user,post,score,ts\nu1,10,1.0,1700000000\nu2,11,,1700000100\n")
    (tmp_path / "b.jsonl").write_text('{"user": "u1", "post": 10, "score": 1.0, "ts": 1700000000}\n\n'
                                      '{"user": "u2", "post": 11, "ts": 1700000100}\r\n')
    with gzip.open(tmp_path / "c.ndjson.gz", "wt") as fh:
        fh.write('{"user": "u1", "post": 10, "score": 1.0, "ts": 1700000000}\n'
                 '{"user": "u2", "post": 11, "score": null, "ts": 1700000100}')  # no final newline
    want = EVENTS.iloc[:2].copy()
    want.loc[1, "score"] = np.nan
    for name in ("a.csv", "b.jsonl", "c.ndjson.gz"):
        assert_events_equal(rows(iter_batches(tmp_path / name)), want)


def test_format_inference_and_override(tmp_path: Path) -> None:
    assert format_of("x.PARQUET") == "parquet"
    assert format_of("dir/x.csv.gz") == "csv"
    assert format_of("x.json") == "jsonl"
    assert format_of("x.dat", "CSV") == "csv"
    assert format_of("x.csv", "ndjson") == "jsonl"
    path = tmp_path / "events.dat"
    path.write_text("a,b\n1,2\n")
    assert rows(iter_batches(path, format="csv")).to_dict("list") == {"a": [1], "b": [2]}
    with pytest.raises(FileFormatError, match=r"events\.dat: cannot tell the format from the extension '\.dat'"):
        iter_batches(path)
    with pytest.raises(FileFormatError, match=r"unknown format 'xml'; supported: parquet, csv, tsv, jsonl"):
        iter_batches(path, format="xml")
    with pytest.raises(FileFormatError, match="compressed Parquet"):
        format_of("x.parquet.gz")


def test_to_pandas(tmp_path: Path) -> None:
    write_table(EVENTS, tmp_path / "e.parquet")
    (batch,) = iter_batches(tmp_path / "e.parquet", to_pandas=True)
    assert isinstance(batch, pd.DataFrame)
    assert_events_equal(batch)


# ---------------------------------------------------------------------------------------------------
# Batching, laziness, progress
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["parquet", "csv", "jsonl"])
def test_250k_rows_give_three_batches(tmp_path: Path, ext: str) -> None:
    df = big_frame(250_000)
    path = tmp_path / f"big.{ext}"
    write_table(df, path)
    reader = iter_batches(path, block_bytes=1 << 20)
    sizes = [b.num_rows for b in reader]
    assert sizes == [100_000, 100_000, 50_000]
    assert reader.rows_read == 250_000
    assert reader.bytes_read == reader.total_bytes == os.path.getsize(path)
    again = rows(iter_batches(path, batch_rows=64_000))
    assert again["ts"].tolist() == df["ts"].tolist() and again["x"].tolist() == df["x"].tolist()


def test_parquet_row_groups_are_rebatched(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pandas(big_frame(10_000)), tmp_path / "rg.parquet", row_group_size=3_000)
    assert [b.num_rows for b in iter_batches(tmp_path / "rg.parquet", batch_rows=4_000)] == [4_000, 4_000, 2_000]
    assert [b.num_rows for b in iter_batches(tmp_path / "rg.parquet", batch_rows=1_000)] == [1_000] * 10


def test_reader_is_lazy_first_batch_before_a_corrupt_end_csv(tmp_path: Path) -> None:
    path = tmp_path / "bad_end.csv"
    big_frame(250_000).to_csv(path, index=False)
    with open(path, "a") as fh:
        fh.write("1,2\n")  # two fields where the header has three: line 250002
    reader = iter_batches(path, block_bytes=1 << 20)
    first = next(reader)  # pyarrow may have read ahead (~32 blocks) but parses block by block
    assert first.num_rows == 100_000
    with pytest.raises(FileFormatError) as info:
        list(reader)
    e = info.value
    assert (e.path, e.line) == (str(path), 250_002)
    assert str(e).startswith(f"{path}:250002: CSV parse error: Expected 3 columns, got 2")
    assert reader.rows_read == 200_000  # the second batch came out too, before the error


def test_reader_is_lazy_first_batch_before_a_corrupt_end_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "bad_end.jsonl"
    write_table(big_frame(250_000), path)
    with open(path, "a") as fh:
        fh.write('{"user": 1, "x": 0.5, "ts": 3\n')  # unterminated object on line 250001
    reader = iter_batches(path, block_bytes=1 << 20)
    assert next(reader).num_rows == 100_000
    assert 0 < reader.bytes_read < reader.total_bytes
    assert next(reader).num_rows == 100_000
    with pytest.raises(FileFormatError) as info:
        next(reader)
    assert info.value.line == 250_001
    assert str(info.value).startswith(f"{path}:250001: invalid JSON: ")


def test_multiple_files_directory_and_glob(tmp_path: Path) -> None:
    d = tmp_path / "events"
    (d / "sub").mkdir(parents=True)
    write_table(EVENTS.iloc[:2], d / "part-0.parquet")
    write_table(EVENTS.iloc[2:], d / "sub" / "part-1.csv")
    (d / "_SUCCESS").write_text("")
    (d / ".hidden.csv").write_text("garbage")
    (d / "notes.txt.md").write_text("not events")
    files = resolve_paths(d)
    assert files == [str(d / "part-0.parquet"), str(d / "sub" / "part-1.csv")]
    reader = iter_batches(d, batch_rows=2)
    seen = []
    for batch in reader:
        seen.append((os.path.basename(reader.path), batch.num_rows))
    assert seen == [("part-0.parquet", 2), ("part-1.csv", 2), ("part-1.csv", 1)]  # batches never span files
    assert reader.path is None and reader.bytes_read == reader.total_bytes == total_bytes(d)
    assert_events_equal(rows(iter_batches([d / "part-0.parquet", d / "sub" / "part-1.csv"])))
    assert resolve_paths(str(d / "**" / "*.csv")) == [str(d / "sub" / "part-1.csv")]
    assert count_rows(d) == 5


def test_close_stops_early(tmp_path: Path) -> None:
    write_table(big_frame(1_000), tmp_path / "a.csv")
    with iter_batches(tmp_path / "a.csv", batch_rows=100) as reader:
        assert isinstance(reader, BatchReader)
        next(reader)
        assert reader.path == str(tmp_path / "a.csv")
    assert reader.path is None
    with pytest.raises(StopIteration):
        next(reader)


def test_count_rows_and_total_bytes(tmp_path: Path) -> None:
    df = big_frame(1234)
    for ext in ("parquet", "csv.gz", "jsonl"):
        write_table(df, tmp_path / f"c.{ext}")
        assert count_rows(tmp_path / f"c.{ext}") == 1234
    (tmp_path / "q.csv").write_text('a,b\n1,"two\nlines"\n2,x\n')  # a quoted newline is one row
    assert count_rows(tmp_path / "q.csv") == 2
    assert total_bytes([tmp_path / "c.parquet", tmp_path / "q.csv"]) == \
        os.path.getsize(tmp_path / "c.parquet") + os.path.getsize(tmp_path / "q.csv")


def test_bad_arguments(tmp_path: Path) -> None:
    write_table(EVENTS, tmp_path / "e.csv")
    with pytest.raises(OptionError, match="batch_rows"):
        iter_batches(tmp_path / "e.csv", batch_rows=0)
    with pytest.raises(OptionError, match="columns"):
        iter_batches(tmp_path / "e.csv", columns=["a", "a"])
    with pytest.raises(OptionError, match="unknown type 'float65'"):
        iter_batches(tmp_path / "e.csv", column_types={"score": "float65"})


@pytest.mark.parametrize("kwargs,match", [
    ({"column_types": {"score": 5}}, r"column_types\['score'\]: a pyarrow type or its name"),
    ({"column_types": ["score"]}, "column_types must map column names to types, not list"),
    ({"timestamps": 5}, "timestamps must be a column name or a list of them, not int"),
    ({"timestamps": ["ts", 5]}, "timestamps must be column names"),
    ({"sample_bytes": "8MiB"}, "sample_bytes must be an integer"),
])
def test_options_of_the_wrong_type_are_option_errors_naming_the_option(tmp_path: Path, kwargs, match) -> None:
    write_table(EVENTS, tmp_path / "e.csv")
    with pytest.raises(OptionError, match=match):
        iter_batches(tmp_path / "e.csv", **kwargs)


@pytest.mark.parametrize("paths,match", [
    (5, "paths must be a file, directory or glob pattern, or a list of them, not int"),
    (None, "not NoneType"),
    ([5], "paths: 5 is not a file, directory or glob pattern"),
])
def test_paths_of_the_wrong_type_are_option_errors(paths, match) -> None:
    for call in (iter_batches, count_rows, total_bytes):
        with pytest.raises(OptionError, match=match):
            call(paths)


def test_write_table_path_of_the_wrong_type_is_an_option_error() -> None:
    for path in (5, None):
        with pytest.raises(OptionError, match=f"write_table: path must be a file path .*not {type(path).__name__}"):
            write_table(EVENTS, path)


# ---------------------------------------------------------------------------------------------------
# Columns and types
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["parquet", "csv", "jsonl"])
def test_column_selection_and_order(tmp_path: Path, ext: str) -> None:
    write_table(EVENTS, tmp_path / f"e.{ext}")
    got = rows(iter_batches(tmp_path / f"e.{ext}", columns=["ts", "user"]))
    assert_events_equal(got, EVENTS[["ts", "user"]])


@pytest.mark.parametrize("ext", ["parquet", "csv"])
def test_missing_column_is_an_error_naming_the_file(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"e.{ext}"
    write_table(EVENTS, path)
    with pytest.raises(FileFormatError, match=rf"^{path}: .*'nope'"):
        list(iter_batches(path, columns=["user", "nope"]))


def test_jsonl_missing_column_reads_as_null(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    write_table(EVENTS, path)
    got = rows(iter_batches(path, columns=["user", "nope"]))
    assert got["nope"].isna().all() and got["user"].tolist()[:2] == ["u1", "u2"]


def test_csv_type_inference_from_a_sample_and_column_types(tmp_path: Path) -> None:
    path = tmp_path / "late_float.csv"
    path.write_text("user,x\n" + "u,1\n" * 50_000 + "u,1.5\n")
    got = rows(iter_batches(path, block_bytes=1 << 16))  # the 8 MiB sample sees the float
    assert got["x"].iloc[-1] == 1.5 and got["x"].dtype == np.float64
    with pytest.raises(FileFormatError) as info:  # without a sample: the first block decides
        list(iter_batches(path, block_bytes=1 << 16, sample_bytes=0))
    assert str(info.value).startswith(f"{path}:50002: column 'x': CSV conversion error to int64: invalid value '1.5'")
    assert "column_types={'x': ...}" in str(info.value)
    got = rows(iter_batches(path, block_bytes=1 << 16, sample_bytes=0, column_types={"x": "float64"}))
    assert got["x"].iloc[-1] == 1.5 and len(got) == 50_001
    late = tmp_path / "late_empty.csv"
    late.write_text("user,x\n" + "u,\n" * 50_000 + "u,2\n")  # all empty in the sample: null type
    with pytest.raises(FileFormatError, match=r"column 'x': CSV conversion error to null"):
        list(iter_batches(late, block_bytes=1 << 16, sample_bytes=1 << 17))


def test_csv_sampled_timestamps_take_later_fractions(tmp_path: Path) -> None:
    path = tmp_path / "ts.csv"
    path.write_text("ts,x\n" + "2024-01-01T00:00:00,1\n" * 20_000 + "2024-01-01T00:00:00.25,2\n")
    got = rows(iter_batches(path, block_bytes=1 << 16, sample_bytes=1 << 17))
    assert to_micros(got["ts"]).tolist()[-2:] == [1704067200_000000, 1704067200_250000]


def test_column_types_cast_parquet_and_jsonl(tmp_path: Path) -> None:
    for ext in ("parquet", "jsonl"):
        write_table(EVENTS, tmp_path / f"e.{ext}")
        (batch,) = iter_batches(tmp_path / f"e.{ext}", column_types={"post": pa.string()})
        assert batch.column("post").to_pylist() == ["10", "11", "10", "12", "13"]
    with pytest.raises(FileFormatError, match=r"e\.parquet: column 'user': cannot convert to int64"):
        list(iter_batches(tmp_path / "e.parquet", column_types={"user": "int64"}))


def test_csv_empty_fields_are_null_and_quoted_empty_is_empty_string(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text('a,b\nx,1\n,2\n"",3\n')
    assert nones(rows(iter_batches(path))["a"])[1:] == [None, ""]


def test_timestamps_as_read_are_readable_by_the_store(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("ts,x\n2024-01-01T00:00:00Z,1\n2024-01-01T00:00:01.5Z,2\n")
    (tmp_path / "t.jsonl").write_text('{"ts": "2024-01-01T00:00:00", "x": 1}\n{"ts": "2024-01-01 00:00:01", "x": 2}\n')
    (tmp_path / "n.csv").write_text("ts,x\n1704067200,1\n1704067201.5,2\n")
    want = [1704067200_000000, 1704067201_500000]
    assert to_micros(rows(iter_batches(tmp_path / "t.csv"))["ts"]).tolist() == want
    assert to_micros(rows(iter_batches(tmp_path / "n.csv"))["ts"]).tolist() == want
    assert to_micros(rows(iter_batches(tmp_path / "t.jsonl"))["ts"]).tolist() == [want[0], want[0] + 1_000_000]


def test_timestamps_option_parses_iso_strings(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"ts": "2024-01-01T00:00:00.5", "x": 1}\n{"ts": "2024-01-01T02:00:00+02:00", "x": 2}\n'
                    '{"ts": null, "x": 3}\n')
    (plain,) = iter_batches(path)
    assert pa.types.is_string(plain.column("ts").type)  # as read, without the option
    (batch,) = iter_batches(path, timestamps=["ts"])
    assert batch.column("ts").type == pa.timestamp("us", tz="UTC")
    df = batch.to_pandas()
    assert to_micros(df["ts"].iloc[:2]).tolist() == [1704067200_500000, 1704067200_000000]
    assert pd.isna(df["ts"].iloc[2])
    with pytest.raises(FileFormatError, match=r"t\.jsonl: timestamp column 'when' not found"):
        list(iter_batches(path, timestamps=["when"]))
    (tmp_path / "bad.csv").write_text("ts\nyesterday\n")
    with pytest.raises(FileFormatError, match=r"bad\.csv: row 0: timestamp column 'ts': 'yesterday' is neither an "
                                              r"ISO 8601 time nor a number of epoch seconds$"):
        list(iter_batches(tmp_path / "bad.csv", timestamps=["ts"]))


def _iso_forms(n: int, seed: int) -> tuple[list[str], list[int]]:
    """``n`` ISO 8601 strings of mixed forms (Z, offsets, naive, fractions, dates) and their epoch micros."""
    rng = np.random.default_rng(seed)
    base = 1704067200  # 2024-01-01T00:00:00Z
    texts, micros = [], []
    for i in range(n):
        sec = base + int(rng.integers(0, 86_400 * 30))
        frac = int(rng.integers(0, 1_000_000))
        t = pd.Timestamp(sec * 1_000_000 + frac, unit="us", tz="UTC")
        form = i % 6
        if form == 0:
            texts.append(t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        elif form == 1:
            texts.append(t.tz_convert("Asia/Kolkata").isoformat())  # +05:30
        elif form == 2:
            texts.append(t.tz_localize(None).isoformat(sep=" "))  # naive: UTC
        elif form == 3:
            t = t.floor("s")
            texts.append(t.strftime("%Y-%m-%dT%H:%M:%SZ"))
        elif form == 4:
            t = t.floor("ms")
            texts.append(t.tz_convert("America/New_York").isoformat(timespec="milliseconds"))
        else:
            t = t.floor("D")
            texts.append(t.strftime("%Y-%m-%d"))
        micros.append(t.value // 1000)
    return texts, micros


def test_every_iso_form_is_parsed_wherever_it_appears_in_json_lines(tmp_path: Path) -> None:
    """Whole seconds with Z for the first 1,500 lines (pyarrow infers a timestamp type), then every form."""
    lead = [f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z" for i in range(1500)]
    mixed, micros = _iso_forms(600, seed=11)
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps({"k": "a", "ts": t}) + "\n" for t in lead + mixed + ["2024-01-01T00:00:05.5Z"]))
    batches = list(iter_batches(path, batch_rows=1000, timestamps=["ts"]))
    assert [b.column("ts").type for b in batches] == [pa.timestamp("us", tz="UTC")] * 3  # one type for all
    got = to_micros(pd.concat([b.to_pandas() for b in batches], ignore_index=True)["ts"]).tolist()
    want = [1704067200_000000 + (i // 60 % 60 * 60 + i % 60) * 1_000_000 for i in range(1500)]
    assert got == want + micros + [1704067205_500000]


def test_every_iso_form_is_parsed_wherever_it_appears_in_csv(tmp_path: Path) -> None:
    """The type sampled from the start of a CSV file (tz-aware whole seconds) binds no later line."""
    lead = [f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z" for i in range(400)]
    mixed, micros = _iso_forms(600, seed=12)
    path = tmp_path / "e.csv"
    path.write_text("k,ts\n" + "".join(f"a,{t}\n" for t in lead + mixed + ["2024-01-01T00:00:00.123456789Z"]))
    reader = iter_batches(path, batch_rows=300, timestamps=["ts"], block_bytes=1024, sample_bytes=4096)
    got = to_micros(pd.concat([b.to_pandas() for b in reader], ignore_index=True)["ts"]).tolist()
    want = [1704067200_000000 + (i // 60 % 60 * 60 + i % 60) * 1_000_000 for i in range(400)]
    assert got == want + micros + [1704067200_123456]


def test_timestamp_columns_of_numbers_stay_numbers(tmp_path: Path) -> None:
    (tmp_path / "n.csv").write_text("ts,x\n1704067200,1\n1704067201,2\n,3\n")
    (tmp_path / "f.csv").write_text("ts,x\n1704067200.25,1\n1.5e9,2\n")
    (tmp_path / "mix.csv").write_text("ts,x\n1704067200,1\n2024-01-01T00:00:00Z,2\n")
    (batch,) = iter_batches(tmp_path / "n.csv", timestamps=["ts"])
    assert batch.column("ts").to_pylist() == [1704067200, 1704067201, None]
    (batch,) = iter_batches(tmp_path / "f.csv", timestamps=["ts"])
    assert batch.column("ts").to_pylist() == [1704067200.25, 1.5e9]
    with pytest.raises(FileFormatError, match=r"mix\.csv: row 0: timestamp column 'ts': '1704067200' is neither"):
        list(iter_batches(tmp_path / "mix.csv", timestamps=["ts"]))


# ---------------------------------------------------------------------------------------------------
# Errors name the file (and line)
# ---------------------------------------------------------------------------------------------------


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match=rf"^{tmp_path}/nope\.csv: no such file$") as info:
        iter_batches(tmp_path / "nope.csv")
    assert isinstance(info.value, SchemaError)
    with pytest.raises(FileFormatError, match=r"no file matches this pattern"):
        iter_batches(str(tmp_path / "*.parquet"))
    with pytest.raises(FileFormatError, match=r"directory holds no event files"):
        iter_batches(tmp_path)
    with pytest.raises(FileFormatError, match=r"no event files given"):
        iter_batches([])


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(FileFormatError, match=rf"^{path}: not a readable Parquet file: "):
        list(iter_batches(path))


def test_csv_errors(tmp_path: Path) -> None:
    (tmp_path / "short.csv").write_text("a,b,c\n1,2,3\n4,5\n")
    with pytest.raises(FileFormatError, match=r"short\.csv:3: CSV parse error: Expected 3 columns, got 2: 4,5"):
        list(iter_batches(tmp_path / "short.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(FileFormatError, match=r"empty\.csv:1: empty file"):
        list(iter_batches(tmp_path / "empty.csv"))
    (tmp_path / "header.csv").write_text("a,b\n")
    assert list(iter_batches(tmp_path / "header.csv")) == []
    (tmp_path / "bad.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(FileFormatError, match=r"bad\.csv\.gz: "):
        list(iter_batches(tmp_path / "bad.csv.gz"))


def test_jsonl_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n\n{"a": 2,}\n')
    with pytest.raises(FileFormatError, match=r"bad\.jsonl:3: invalid JSON: "):
        list(iter_batches(tmp_path / "bad.jsonl"))
    (tmp_path / "list.jsonl").write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(FileFormatError, match=r"list\.jsonl:2: expected a JSON object, got list"):
        list(iter_batches(tmp_path / "list.jsonl"))
    (tmp_path / "mixed.jsonl").write_text('{"a": 1}\n{"a": 2}\n{"a": "x"}\n')
    with pytest.raises(FileFormatError, match=r"mixed\.jsonl:3: Column\(/a\) changed from number to string"):
        list(iter_batches(tmp_path / "mixed.jsonl"))
    (tmp_path / "array.json").write_text(json.dumps([{"a": 1}, {"a": 2}]))
    with pytest.raises(FileFormatError, match=r"array\.json:1: holds a JSON array, not JSON lines"):
        list(iter_batches(tmp_path / "array.json"))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert list(iter_batches(tmp_path / "empty.jsonl")) == []


def test_json_types_may_differ_between_batches(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1, "b": null}\n{"a": 2.5, "b": "x"}\n')
    first, second = iter_batches(path, batch_rows=1)
    assert first.schema.field("a").type == pa.int64() and second.schema.field("a").type == pa.float64()
    assert first.schema.field("b").type == pa.null() and second.schema.field("b").type == pa.string()


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------


def test_write_table_arrow_input_parent_dirs_and_overwrite(tmp_path: Path) -> None:
    table = pa.Table.from_pandas(EVENTS, preserve_index=False)
    path = tmp_path / "out" / "deeper" / "train.parquet"
    assert write_table(table, path) == 5
    assert_events_equal(pq.read_table(path).to_pandas())
    assert write_table(table.to_batches()[0].slice(0, 2), path) == 2  # a RecordBatch; overwrites
    assert pq.read_table(path).num_rows == 2
    assert sorted(os.listdir(path.parent)) == ["train.parquet"]  # no temporary left behind


def test_write_table_index_is_not_written(tmp_path: Path) -> None:
    df = EVENTS.set_index(pd.Index([5, 6, 7, 8, 9], name="idx"))
    for ext in ("parquet", "csv", "jsonl"):
        write_table(df, tmp_path / f"i.{ext}")
        assert list(rows(iter_batches(tmp_path / f"i.{ext}")).columns) == list(EVENTS.columns)


def test_write_timestamps(tmp_path: Path) -> None:
    df = pd.DataFrame({"ts": pd.to_datetime([1704067200, 1704067201], unit="s"),
                       "tz": pd.to_datetime([1704067200.25, 1704067201], unit="s", utc=True), "x": [1, 2]})
    want = [1704067200_000000, 1704067201_000000]
    for ext in ("parquet", "csv", "jsonl"):
        write_table(df, tmp_path / f"t.{ext}")
        got = rows(iter_batches(tmp_path / f"t.{ext}", timestamps=["tz"]))
        assert to_micros(got["ts"]).tolist() == want, ext
        assert to_micros(got["tz"]).tolist() == [want[0] + 250_000, want[1]], ext
    first = (tmp_path / "t.jsonl").read_text().splitlines()[0]
    assert first.startswith('{"ts":"2024-01-01T00:00:00","tz":"2024-01-01T00:00:00.250000Z"')


def test_write_mixed_key_column(tmp_path: Path) -> None:
    df = pd.DataFrame({"user": ["a", 1, None], "x": [1.0, 2.0, 3.0]})
    with pytest.raises(FileFormatError, match=r"m\.parquet: column 'user' cannot be written as parquet: it mixes "
                                              r"int, str"):
        write_table(df, tmp_path / "m.parquet")
    assert not os.listdir(tmp_path)  # nothing half-written
    write_table(df, tmp_path / "m.csv")
    assert nones(rows(iter_batches(tmp_path / "m.csv"))["user"]) == ["a", "1", None]  # CSV is text
    write_table(df, tmp_path / "m.jsonl")
    assert [json.loads(line)["user"] for line in open(tmp_path / "m.jsonl")] == ["a", 1, None]


def test_write_table_errors(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match=r"out\.xlsx: cannot tell the format"):
        write_table(EVENTS, tmp_path / "out.xlsx")
    with pytest.raises(OptionError, match="DataFrame or pyarrow Table"):
        write_table([{"a": 1}], tmp_path / "out.csv")


def test_write_empty_frame(tmp_path: Path) -> None:
    for ext in ("parquet", "csv", "jsonl"):
        assert write_table(EVENTS.iloc[:0], tmp_path / f"z.{ext}") == 0
        assert count_rows(tmp_path / f"z.{ext}") == 0


def test_file_format_error_pickles_and_jsonl_bom(tmp_path: Path) -> None:
    import pickle

    e = FileFormatError("x.csv", "bad", line=3)
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is FileFormatError and str(again) == "x.csv:3: bad" and again.line == 3
    assert str(FileFormatError("x.parquet", "bad", row=7)) == "x.parquet: row 7: bad"
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')
    assert rows(iter_batches(tmp_path / "bom.jsonl"))["a"].tolist() == [1, 2]
