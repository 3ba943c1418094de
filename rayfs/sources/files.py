"""Event files: read Parquet, CSV and JSON lines batch by batch in constant memory; write tables.

:func:`iter_batches` streams one or more files as tables of at most ``batch_rows`` rows each. Memory stays
bounded whatever the file sizes: about one batch, plus pyarrow's read-ahead for CSV (~32 blocks of
``block_bytes``, 1 MiB) or one Parquet row group, so a file far larger than RAM can be ingested batch by
batch::

    for batch in iter_batches("data/upvotes-*.parquet"):
        store.ingest("upvotes", batch)

Formats, inferred from the file name or given as ``format=``:

==============================================  ==========  =================================================
file name                                       format      read with
==============================================  ==========  =================================================
``.parquet``, ``.pq``, ``.parq``                ``parquet`` ``pyarrow.parquet.ParquetFile.iter_batches``
``.csv``                                        ``csv``     ``pyarrow.csv.open_csv`` (streaming, header row)
``.tsv``                                        ``tsv``     the same, tab-separated
``.jsonl``, ``.ndjson``, ``.json``              ``jsonl``   one JSON object per line, parsed per batch of
                                                            lines with ``pyarrow.json`` (blank lines skipped)
==============================================  ==========  =================================================

CSV, TSV and JSON lines files may be compressed: ``.gz``, ``.bz2``, ``.zst``, ``.lz4`` after the
extension (``events.csv.gz``). A ``.json`` file holding one JSON array is refused (it cannot be streamed).

Types are inferred by pyarrow, with these consequences:

* CSV/TSV: the types of a file's columns are inferred from its first 8 MiB (``sample_bytes``) and kept
  for the whole file, so a column that is empty there, or integer there and fractional later, fails with
  a :class:`FileFormatError` naming the column; pass ``column_types={"col": "float64"}``. Timestamps
  inferred there are read at microsecond precision, so later fractional seconds fit.
* JSON lines: types are inferred per batch, so they may differ between batches (an all-null column, int
  then float); a column that mixes numbers and strings within one batch is an error naming the line.
  A key that no line of a batch has is absent from that batch (rayfs reads absent columns as null), or,
  if it is one of ``columns``, a null column.
* Timestamps: rayfs's ingest does not parse strings, so name the timestamp columns in ``timestamps=``
  (``rayfs ingest`` and ``rayfs train`` name the stream's or observations' timestamp column). Every
  ISO 8601 string in them is parsed, wherever it appears and whatever its form (``Z``, offsets, naive
  meaning UTC, dates, fractional seconds, mixed in one file), into ``timestamp[us, UTC]``; numbers, and
  text holding only numbers, stay numbers (epoch seconds to rayfs); typed timestamps become
  ``timestamp[us, UTC]`` too. In CSV/TSV files these columns are read as text and converted batch by
  batch, so no type inferred from the start of the file binds them. A value that is neither a time nor
  a number is a :class:`FileFormatError` naming the column and row. Columns not named are left as
  pyarrow reads them (ISO strings become timestamps when pyarrow recognises them).

Batches never span files; every batch holds ``batch_rows`` rows except the last one of each file.
Every problem (missing file, unknown extension, unparsable row, unknown column) is a
:class:`FileFormatError` naming the file and, when known, the line (``data/x.csv:12: ...``) or row.

:func:`write_table` writes a DataFrame or pyarrow Table as Parquet, CSV or JSON lines chosen by extension
(``rayfs train -o train.parquet``); :func:`total_bytes` and :func:`count_rows` size a progress bar.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from rayfs.errors import FileFormatError, OptionError

__all__ = ["FORMATS", "BatchReader", "count_rows", "format_of", "iter_batches",
           "resolve_paths", "total_bytes", "write_table"]

FORMATS = ("parquet", "csv", "tsv", "jsonl")
"""The file formats, as ``format=`` takes them (also ``"json"``, ``"ndjson"``, ``"pq"`` for short)."""

_EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".parq": "parquet", ".csv": "csv", ".tsv": "tsv",
               ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_ALIASES = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet", "txt": "csv"}
_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}
_BLOCK = 1 << 20  # pyarrow's CSV reader reads ~32 blocks ahead: ~32 MiB buffered at most
_SAMPLE = 8 << 20


# --------------------------------------------------------------------------------------------------
# Paths and formats
# --------------------------------------------------------------------------------------------------


def _split_ext(path: str) -> tuple[str, str | None]:
    """(format extension, compression) of a file name, e.g. ``(".csv", "gzip")``; ext ``""`` if none."""
    name = os.path.basename(path).lower()
    compression = None
    for suffix, codec in _COMPRESSIONS.items():
        if name.endswith(suffix):
            name, compression = name[:-len(suffix)], codec
            break
    return os.path.splitext(name)[1], compression


def format_of(path: str | os.PathLike, format: str | None = None) -> str:
    """The format of ``path``: ``format`` if given (validated), else inferred from the file name.

    Raises:
        FileFormatError: an unknown format or extension, or a compressed Parquet file.

    >>> format_of("events.parquet"), format_of("x.csv.gz"), format_of("x.ndjson"), format_of("x.dat", "json")
    ('parquet', 'csv', 'jsonl', 'jsonl')
    """
    p = os.fspath(path)
    ext, compression = _split_ext(p)
    if format is not None:
        fmt = _ALIASES.get(format.lower(), format.lower()) if isinstance(format, str) else None
        if fmt not in FORMATS:
            raise FileFormatError(p, f"unknown format {format!r}; supported: {', '.join(FORMATS)}")
    else:
        fmt = _EXTENSIONS.get(ext)
        if fmt is None:
            known = ", ".join(sorted(_EXTENSIONS))
            raise FileFormatError(p, f"cannot tell the format from the extension {ext or '(none)'!r}; known: "
                                     f"{known} (optionally compressed: {', '.join(_COMPRESSIONS)}); pass format=")
    if fmt == "parquet" and compression is not None:
        raise FileFormatError(p, "a compressed Parquet file is not supported (Parquet compresses internally)")
    return fmt


def _wanted(name: str) -> bool:
    base = os.path.basename(name)
    return not base.startswith((".", "_")) and _split_ext(name)[0] in _EXTENSIONS


def resolve_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Expand ``paths`` into the list of files to read, in order.

    A directory stands for the event files under it (recursively, sorted, known extensions only, names
    starting with ``.`` or ``_`` skipped, e.g. Spark's ``_SUCCESS``); a path that does not exist but
    contains ``*``, ``?`` or ``[`` is a glob pattern (sorted matches).

    Raises:
        FileFormatError: a path that does not exist, a pattern or directory without files, no paths.
    """
    if isinstance(paths, str | os.PathLike):
        items = [paths]
    elif isinstance(paths, Iterable) and not isinstance(paths, bytes):
        items = list(paths)
    else:
        items = [paths]  # refused below, naming it
    if not items:
        raise FileFormatError("<no files>", "no event files given")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str | os.PathLike):
            raise FileFormatError(repr(item), f"a path is a str or os.PathLike, not {type(item).__name__}")
        p = os.fspath(item)
        if os.path.isdir(p):
            found = sorted(os.path.join(root, f) for root, dirs, files in os.walk(p) for f in files
                           if _wanted(os.path.join(root, f)))
            if not found:
                raise FileFormatError(p, f"directory holds no event files ({', '.join(sorted(_EXTENSIONS))})")
            out += found
        elif os.path.exists(p):
            out.append(p)
        elif any(c in p for c in "*?["):
            found = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))
            if not found:
                raise FileFormatError(p, "no file matches this pattern")
            out += found
        else:
            raise FileFormatError(p, "no such file")
    return out


def total_bytes(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> int:
    """The summed size of the files ``paths`` stands for (cheap: no file is read).

    Compare it with :attr:`BatchReader.bytes_read` for a progress bar.
    """
    return sum(os.path.getsize(p) for p in resolve_paths(paths))


def count_rows(paths: str | os.PathLike | Iterable[str | os.PathLike], format: str | None = None) -> int:
    """The number of rows (events) in the files.

    Parquet files are counted from their footers (cheap); CSV and JSON lines files are read through once
    (constant memory, about as fast as reading them): prefer :func:`total_bytes` for a progress bar.
    """
    n = 0
    for p in resolve_paths(paths):
        fmt = format_of(p, format)
        if fmt == "parquet":
            pf = _parquet_file(p)
            n += pf.metadata.num_rows
            pf.close()
        elif fmt == "jsonl":
            with _open_text_stream(p) as (stream, _):
                n += sum(1 for _ in _lines(stream, p))
        else:
            for batch in _csv_batches(p, fmt, None, {}, _BLOCK, sample=_SAMPLE):
                n += batch.num_rows
    return n


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def iter_batches(paths: str | os.PathLike | Iterable[str | os.PathLike], format: str | None = None,
                 batch_rows: int = 100_000, columns: Sequence[str] | None = None, *,
                 column_types: Mapping[str, str | pa.DataType] | None = None, timestamps: Sequence[str] = (),
                 to_pandas: bool = False, block_bytes: int = _BLOCK, sample_bytes: int = _SAMPLE) -> BatchReader:
    """Read event files batch by batch, in constant memory.

    Args:
        paths: a file, directory or glob pattern, or a list of them (see :func:`resolve_paths`).
        format: ``"parquet"``, ``"csv"``, ``"tsv"`` or ``"jsonl"`` for every file; by default each file's
            format comes from its extension.
        batch_rows: the most rows per batch; every batch of a file but its last has exactly this many.
        columns: read only these columns, in this order (a column missing from a Parquet or CSV file is an
            error; JSON lines has no header, so there a missing column reads as null).
        column_types: pyarrow types (``pa.float64()`` or names like ``"float64"``, ``"string"``) for some
            columns, instead of inferred ones (see the module docstring for why CSV may need them).
        timestamps: timestamp columns: their ISO 8601 strings are parsed (UTC) wherever they appear, their
            numbers kept (see the module docstring).
        to_pandas: yield pandas DataFrames instead of pyarrow Tables.
        block_bytes: the bytes read at a time from CSV and JSON lines files (memory: pyarrow's CSV reader
            buffers up to about 32 blocks ahead).
        sample_bytes: CSV/TSV types are inferred from this many bytes at the start of each file.

    Returns:
        A :class:`BatchReader`: an iterator of batches that also reports progress (``bytes_read``,
        ``total_bytes``, ``rows_read``, ``path``). Files are opened lazily, one at a time.

    Raises:
        FileFormatError: at once for a missing file or unknown format; during iteration for unreadable
            content (earlier batches have been yielded by then).

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> _ = write_table(pd.DataFrame({"user": ["a", "b", "c"], "ts": [1, 2, 3]}), f"{d}/e.csv")
    >>> [b.num_rows for b in iter_batches(f"{d}/e.csv", batch_rows=2)]
    [2, 1]
    """
    return BatchReader(paths, format, batch_rows, columns, column_types=column_types, timestamps=timestamps,
                       to_pandas=to_pandas, block_bytes=block_bytes, sample_bytes=sample_bytes)


class BatchReader(Iterator):
    """The iterator :func:`iter_batches` returns (same arguments); close it to stop early.

    Attributes:
        paths: the files, in reading order.
        total_bytes: their summed size.
        bytes_read: bytes of the files consumed so far (for compressed files, compressed bytes; for
            Parquet, estimated from the rows read); equals ``total_bytes`` once exhausted.
        rows_read: rows yielded so far.
        path: the file being read, ``None`` before the first and after the last batch.
    """

    def __init__(self, paths, format: str | None = None, batch_rows: int = 100_000,
                 columns: Sequence[str] | None = None, *, column_types: Mapping[str, str | pa.DataType] | None = None,
                 timestamps: Sequence[str] = (), to_pandas: bool = False, block_bytes: int = _BLOCK,
                 sample_bytes: int = _SAMPLE) -> None:
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise OptionError(f"batch_rows must be a positive integer, not {batch_rows!r}")
        if isinstance(block_bytes, bool) or not isinstance(block_bytes, int) or block_bytes < 1024:
            raise OptionError(f"block_bytes must be an integer >= 1024, not {block_bytes!r}")
        if columns is not None:
            columns = [columns] if isinstance(columns, str) else list(columns)
            if not columns or not all(isinstance(c, str) for c in columns) or len(set(columns)) != len(columns):
                raise OptionError(f"columns must be distinct column names, not {columns!r}")
        self.paths = resolve_paths(paths)
        self.formats = [format_of(p, format) for p in self.paths]
        self.sizes = [os.path.getsize(p) for p in self.paths]
        self.total_bytes = sum(self.sizes)
        self.bytes_read = 0
        self.rows_read = 0
        self.path: str | None = None
        self._batch_rows = batch_rows
        self._columns = columns
        self._types = {k: _dtype(v, k) for k, v in (column_types or {}).items()}
        self._timestamps = [timestamps] if isinstance(timestamps, str) else list(timestamps)
        self._to_pandas = to_pandas
        self._block = block_bytes
        self._sample = sample_bytes
        self._gen = self._generate()

    def __iter__(self) -> BatchReader:
        return self

    def __next__(self) -> pa.Table | pd.DataFrame:
        return next(self._gen)

    def close(self) -> None:
        """Stop reading and close the open file."""
        self._gen.close()
        self.path = None

    def __enter__(self) -> BatchReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _generate(self) -> Iterator[pa.Table | pd.DataFrame]:
        done = 0
        for path, fmt, size in zip(self.paths, self.formats, self.sizes, strict=True):
            self.path = path
            if fmt == "parquet":
                tables = self._parquet(path, size, done)
            elif fmt == "jsonl":
                tables = self._jsonl(path, done)
            else:
                tables = self._csv(path, fmt, done)
            file_rows = 0
            for table in tables:
                table = self._finish(table, path, file_rows)
                file_rows += table.num_rows
                self.rows_read += table.num_rows
                yield table.to_pandas() if self._to_pandas else table
            done += size
            self.bytes_read = done
        self.path = None

    def _finish(self, table: pa.Table, path: str, first_row: int) -> pa.Table:
        """Apply ``column_types`` (where not applied while parsing) and ``timestamps``.

        ``first_row`` is the 0-based row of the file the table starts at (for error messages).
        """
        for name, typ in self._types.items():
            i = table.schema.get_field_index(name)
            if i >= 0 and table.schema.field(i).type != typ:
                try:
                    table = table.set_column(i, name, table.column(i).cast(typ))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise FileFormatError(path, f"column {name!r}: cannot convert to {typ}: {exc}") from None
        for name in self._timestamps:
            i = table.schema.get_field_index(name)
            if i < 0:
                raise FileFormatError(path, f"timestamp column {name!r} not found (columns: "
                                            f"{', '.join(table.column_names)})")
            col = table.column(i)
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                table = table.set_column(i, name, _text_times(col, path, name, first_row))
            elif pa.types.is_timestamp(col.type):  # one type for every batch: naive means UTC
                table = table.set_column(i, name, col.cast(pa.timestamp("us", tz="UTC"), safe=False))
        return table

    def _rebatch(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.Table]:
        """Regroup record batches into tables of exactly ``batch_rows`` rows (the last one fewer)."""
        n = self._batch_rows
        pending: list[pa.RecordBatch] = []
        count = 0
        for rb in batches:
            if rb.num_rows == 0:
                continue
            pending.append(rb)
            count += rb.num_rows
            while count >= n:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, n)
                rest = table.slice(n)
                pending, count = rest.to_batches(), rest.num_rows
        if count:
            yield pa.Table.from_batches(pending)

    # -- Parquet -------------------------------------------------------------------------------------

    def _parquet(self, path: str, size: int, done: int) -> Iterator[pa.Table]:
        pf = _parquet_file(path)
        total = max(pf.metadata.num_rows, 1)
        rows = 0
        try:
            names = pf.schema_arrow.names
            missing = [c for c in self._columns or () if c not in names]
            if missing:
                raise FileFormatError(path, f"no column {', '.join(map(repr, missing))} (columns: {', '.join(names)})")
            batches = pf.iter_batches(batch_size=self._batch_rows, columns=self._columns)
            for table in self._rebatch(batches):
                rows += table.num_rows
                self.bytes_read = done + size * rows // total
                yield table
        except (OSError, pa.ArrowException) as exc:
            raise FileFormatError(path, f"unreadable Parquet data after row {rows}: {exc}", row=rows) from None
        finally:
            pf.close()

    # -- CSV -----------------------------------------------------------------------------------------

    def _csv(self, path: str, fmt: str, done: int) -> Iterator[pa.Table]:
        raw: list = []  # the open file, while reading
        # Timestamp columns are read as text and converted batch by batch (_finish): a type pyarrow infers
        # from the start of the file would refuse a later value of another ISO form (naive after "Z",
        # nanoseconds after seconds).
        types = {**{c: pa.string() for c in self._timestamps}, **self._types}
        batches = _csv_batches(path, fmt, self._columns, types, self._block, raw, sample=self._sample)
        for table in self._rebatch(batches):
            self.bytes_read = done + (raw[0].tell() if raw else 0)
            yield table

    # -- JSON lines ----------------------------------------------------------------------------------

    def _jsonl(self, path: str, done: int) -> Iterator[pa.Table]:
        with _open_text_stream(path) as (stream, raw):
            chunk: list[bytes] = []
            linenos: list[int] = []
            for lineno, line in _lines(stream, path, self._block):
                chunk.append(line)
                linenos.append(lineno)
                if len(chunk) == self._batch_rows:
                    table = self._json_table(path, chunk, linenos)
                    self.bytes_read = done + raw.tell()
                    yield table
                    chunk, linenos = [], []
            if chunk:
                yield self._json_table(path, chunk, linenos)

    def _json_table(self, path: str, chunk: list[bytes], linenos: list[int]) -> pa.Table:
        data = b"\n".join(chunk)
        try:
            table = pa_json.read_json(io.BytesIO(data), read_options=pa_json.ReadOptions(
                use_threads=True, block_size=max(len(data) + 1, 1 << 16)))
        except pa.ArrowException as exc:
            raise _json_error(path, chunk, linenos, exc) from None
        if self._columns is not None:
            have = set(table.column_names)
            table = pa.table({c: table.column(c) if c in have else pa.nulls(table.num_rows)
                              for c in self._columns})
        return table


_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def _text_times(col: pa.ChunkedArray, path: str, name: str, first_row: int) -> pa.Array:
    """A timestamp column read as text: numbers (epoch seconds) become numbers, anything else ISO 8601.

    ISO 8601 strings of any form may mix (``Z``, offsets, naive meaning UTC, dates, fractional seconds);
    they become ``timestamp[us, UTC]``. A value that is neither is a :class:`FileFormatError` naming the
    column and the row (``first_row`` is the file-wide row of the column's first value).
    """
    text = col.to_pandas()
    present = text.dropna()
    if len(present) and present.str.fullmatch(_NUMBER).all():
        return pa.array(pd.to_numeric(text), from_pandas=True)
    try:
        parsed = pd.to_datetime(text, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        for row, value in present.items():
            try:
                pd.to_datetime(value, utc=True, format="ISO8601")
            except (ValueError, TypeError, OverflowError) as exc:
                why = str(exc).splitlines()[0] if "ISO8601 format" not in str(exc) else ""
                raise FileFormatError(path, f"timestamp column {name!r}: {value!r} is neither an ISO 8601 time "
                                            f"nor a number of epoch seconds" + (f" ({why})" if why else ""),
                                      row=first_row + int(row)) from None
        raise FileFormatError(path, f"timestamp column {name!r}: values outside the range of timestamps") from None
    return pa.Array.from_pandas(parsed).cast(pa.timestamp("us", tz="UTC"), safe=False)


def _dtype(typ: str | pa.DataType, column: str) -> pa.DataType:
    if isinstance(typ, pa.DataType):
        return typ
    try:
        return pa.type_for_alias(typ)
    except (ValueError, TypeError, KeyError):
        raise OptionError(f"column_types[{column!r}]: unknown type {typ!r} (e.g. 'int64', 'float64', 'string', "
                         "'bool', 'timestamp[us]')") from None


def _parquet_file(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise FileFormatError(path, f"not a readable Parquet file: {exc}") from None


class _open_text_stream:
    """Context manager: (decompressed pyarrow input stream, the raw file whose tell() is the progress)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> tuple[pa.NativeFile, pa.NativeFile]:
        try:
            self.raw = pa.OSFile(self.path, "rb")
        except (OSError, pa.ArrowException) as exc:
            raise FileFormatError(self.path, f"cannot open: {exc}") from None
        compression = _split_ext(self.path)[1]
        try:
            self.stream = pa.CompressedInputStream(self.raw, compression) if compression else self.raw
        except (OSError, pa.ArrowException) as exc:
            self.raw.close()
            raise FileFormatError(self.path, f"cannot decompress ({compression}): {exc}") from None
        return self.stream, self.raw

    def __exit__(self, *exc) -> None:
        self.stream.close()
        self.raw.close()


def _lines(stream: pa.NativeFile, path: str, block: int = _BLOCK) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of a JSON lines stream with their 1-based line numbers, read block by block."""
    rest = b""
    lineno = 0
    first = True
    while True:
        try:
            data = stream.read(block)
        except (OSError, pa.ArrowException) as exc:
            raise FileFormatError(path, f"cannot read after line {lineno}: {exc}", line=lineno + 1) from None
        if first and data:
            first = False
            data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
            if data.lstrip()[:1] == b"[":
                raise FileFormatError(path, "holds a JSON array, not JSON lines (one object per line); convert it, "
                                            "e.g. jq -c '.[]'", line=1)
        if not data:
            break
        parts = (rest + data).split(b"\n")
        rest = parts.pop()
        for part in parts:
            lineno += 1
            if part.strip():
                yield lineno, part
    if rest.strip():
        yield lineno + 1, rest


_JSON_ROW = re.compile(r" in row (\d+)$")


def _json_error(path: str, chunk: list[bytes], linenos: list[int], exc: Exception) -> FileFormatError:
    """Locate a pyarrow JSON error: the first line that is not a JSON object, else pyarrow's row."""
    for line, lineno in zip(chunk, linenos, strict=True):
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            return FileFormatError(path, f"invalid JSON: {e}", line=lineno)
        if not isinstance(obj, dict):
            return FileFormatError(path, f"expected a JSON object, got {type(obj).__name__}", line=lineno)
    msg = str(exc).removeprefix("JSON parse error: ")
    m = _JSON_ROW.search(msg)
    if m and int(m.group(1)) < len(linenos):
        return FileFormatError(path, f"{msg[:m.start()]}; a column must hold one type (numbers or strings)",
                               line=linenos[int(m.group(1))])
    return FileFormatError(path, f"unreadable JSON lines between lines {linenos[0]} and {linenos[-1]}: {msg}")


_CSV_ROW = re.compile(r"^CSV parse error: Row #(\d+): ")
_CSV_COLUMN = re.compile(r"^In CSV column #(\d+): ")


def _csv_batches(path: str, fmt: str, columns: Sequence[str] | None, types: Mapping[str, pa.DataType],
                 block: int, raw_out: list | None = None, *, sample: int = 0) -> Iterator[pa.RecordBatch]:
    """The record batches of a CSV/TSV file, errors turned into FileFormatError naming file and line."""
    parse = pa_csv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
    types = dict(types)
    if sample > block and os.path.getsize(path) > block:
        types = {**_sample_types(path, parse, columns, sample), **types}
    with _open_text_stream(path) as (stream, raw):
        if raw_out is not None:
            raw_out.append(raw)
        names: list[str] = []
        try:
            reader = pa_csv.open_csv(
                stream,
                read_options=pa_csv.ReadOptions(use_threads=False, block_size=block),  # serial: errors name rows
                parse_options=parse, convert_options=_convert_options(columns, types))
            names = reader.schema.names
            yield from reader
        except pa.ArrowInvalid as exc:
            raise _csv_error(path, str(exc), names, columns) from None
        except (OSError, pa.ArrowException) as exc:
            raise FileFormatError(path, f"unreadable {fmt.upper()}: {exc}") from None
        finally:
            if raw_out is not None:
                raw_out.clear()


def _convert_options(columns: Sequence[str] | None, types: Mapping[str, pa.DataType]) -> pa_csv.ConvertOptions:
    # an empty field is null; a quoted empty field "" is the empty string
    return pa_csv.ConvertOptions(include_columns=columns, column_types=dict(types), strings_can_be_null=True,
                                 quoted_strings_can_be_null=False)


def _sample_types(path: str, parse: pa_csv.ParseOptions, columns: Sequence[str] | None,
                  sample: int) -> dict[str, pa.DataType]:
    """Column types inferred from the first ``sample`` bytes (whole lines) of a CSV file; {} if unsure.

    Null-typed (all empty) columns are left out; timestamps are widened to microseconds.
    """
    with _open_text_stream(path) as (stream, _):
        try:
            data = stream.read(sample)
        except (OSError, pa.ArrowException):
            return {}
    if len(data) == sample:
        data = data[:data.rfind(b"\n") + 1]
    try:
        table = pa_csv.read_csv(io.BytesIO(data), read_options=pa_csv.ReadOptions(block_size=len(data) + 1),
                                parse_options=parse, convert_options=_convert_options(columns, {}))
    except pa.ArrowException:  # e.g. cut inside a quoted field: let the reader infer (and report) itself
        return {}
    out: dict[str, pa.DataType] = {}
    for f in table.schema:
        if pa.types.is_null(f.type):
            continue
        out[f.name] = pa.timestamp("us", f.type.tz) if pa.types.is_timestamp(f.type) else f.type
    return out


def _csv_error(path: str, msg: str, names: list[str], columns: Sequence[str] | None) -> FileFormatError:
    if msg.strip() == "Empty CSV file":
        return FileFormatError(path, "empty file: a CSV file needs a header row", line=1)
    m = _CSV_ROW.match(msg)
    if m:
        return FileFormatError(path, f"CSV parse error: {msg[m.end():]}", line=int(m.group(1)))
    m = _CSV_COLUMN.match(msg)
    if m:
        i = int(m.group(1))
        name = names[i] if i < len(names) else f"#{i}"
        rest = msg[m.end():]
        row = re.match(r"Row #(\d+): ", rest)
        if row:
            rest = rest[row.end():]
        return FileFormatError(path, f"column {name!r}: {rest} (types are inferred from the start of the file; "
                                     f"pass column_types={{{name!r}: ...}})", line=int(row.group(1)) if row else None)
    if "include_columns" in msg and columns is not None:
        return FileFormatError(path, f"{msg} (asked for columns {list(columns)})")
    return FileFormatError(path, msg)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def write_table(data: pd.DataFrame | pa.Table | pa.RecordBatch, path: str | os.PathLike,
                format: str | None = None) -> int:
    """Write a table to ``path`` as Parquet, CSV, TSV or JSON lines, by extension or ``format``.

    The file appears whole or not at all (written to a temporary name, then renamed); missing parent
    directories are created. A DataFrame's index is not written. CSV and JSON lines may be compressed
    (``train.csv.gz``). Values round-trip through :func:`iter_batches`, with these limits: CSV writes
    timestamps as ISO 8601 and a key column mixing ints and strings as strings; JSON lines writes
    timestamps as ISO 8601 strings and floats with 15 significant digits.

    Args:
        data: a pandas DataFrame or pyarrow Table/RecordBatch.
        path: the file to (over)write.
        format: ``"parquet"``, ``"csv"``, ``"tsv"`` or ``"jsonl"``; default from the extension.

    Returns:
        The number of rows written.

    Raises:
        FileFormatError: an unknown format, or data the format cannot hold (Parquet: a column mixing
            types); names the column.
    """
    path = os.fspath(path)
    fmt = format_of(path, format)
    compression = _split_ext(path)[1]
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if not isinstance(data, pd.DataFrame | pa.Table):
        raise OptionError(f"write_table({path!r}): data must be a pandas DataFrame or pyarrow Table, "
                          f"not {type(data).__name__}")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        if fmt == "jsonl":
            df = _iso_timestamps(data if isinstance(data, pd.DataFrame) else data.to_pandas())
            with pa.output_stream(tmp, compression=compression) as out:
                for lo in range(0, len(df), 100_000):
                    text = df.iloc[lo:lo + 100_000].to_json(orient="records", lines=True, date_format="iso",
                                                             date_unit="us", double_precision=15)
                    out.write(text.encode() if text.endswith("\n") or not text else (text + "\n").encode())
            n = len(df)
        else:
            table = data if isinstance(data, pa.Table) else _to_arrow(data, path, fmt)
            if fmt == "parquet":
                pq.write_table(table, tmp)
            else:
                with pa.output_stream(tmp, compression=compression) as out:
                    pa_csv.write_csv(table, out, pa_csv.WriteOptions(delimiter="\t" if fmt == "tsv" else ","))
            n = table.num_rows
        os.replace(tmp, path)
        return n
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _iso_timestamps(df: pd.DataFrame) -> pd.DataFrame:
    """Datetime columns as ISO 8601 strings (UTC, ``Z`` if tz-aware), without fractions when whole seconds."""
    out = None
    for name in df.columns:
        col = df[name]
        if not pd.api.types.is_datetime64_any_dtype(col.dtype):
            continue
        tz = getattr(col.dtype, "tz", None) is not None
        if tz:
            col = col.dt.tz_convert("UTC").dt.tz_localize(None)
        whole = bool((col.dropna() == col.dropna().dt.floor("s")).all())
        text = col.dt.strftime("%Y-%m-%dT%H:%M:%S" if whole else "%Y-%m-%dT%H:%M:%S.%f")
        if tz:
            text = text + "Z"
        out = df.copy(deep=False) if out is None else out
        out[name] = text.where(col.notna(), None)
    return df if out is None else out


def _to_arrow(df: pd.DataFrame, path: str, fmt: str) -> pa.Table:
    """A DataFrame as an Arrow table; for CSV, object columns mixing types are written as strings."""
    if fmt != "parquet":
        df = df.copy(deep=False)
        for name in df.columns:
            col = df[name]
            if col.dtype == object and pd.api.types.infer_dtype(col, skipna=True).startswith("mixed"):
                df[name] = col.map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v))
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        for name in df.columns:
            try:
                pa.array(df[name], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
                types = sorted({type(v).__name__ for v in df[name] if v is not None and v == v})
                raise FileFormatError(path, f"column {name!r} cannot be written as {fmt}: it mixes "
                                            f"{', '.join(types)} ({e}); convert it to one type first") from None
        raise FileFormatError(path, f"cannot be written as {fmt}: {exc}") from None
