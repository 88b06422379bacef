"""Bounded reading of every file the suite is given: run folders, results files, gates files, meta.json.

A file a user names (or a run folder sent from elsewhere) may be a FIFO, a device, huge, nested past Python's
recursion limit or hold one enormous cell; read naively, a FIFO blocks forever, /dev/zero reads until MemoryError,
a 10,000-deep meta.json is a RecursionError traceback and a 10 MB cell in results.csv drove `report` to 12.9 GB.
Here every such file is checked BEFORE it is read, in this order:

1. a regular file: `os.stat` first, so a FIFO or a device is refused without being opened; then opened
   non-blocking and checked again with `fstat` (a path swapped between the two cannot block us either);
2. at most a size cap, and read with a bounded read (a file that grows while read is refused the same way);
3. JSON/TOML nested at most `MAX_DEPTH` deep (a parser's RecursionError is turned into the same refusal);
4. tables: at most `TABLE_MAX_COLUMNS` columns, a parquet file at most `PARQUET_MAX_DECODED_BYTES` once
   decompressed (its metadata says so before any data is read), and no cell over `CELL_MAX_CHARS`.

A refusal is one line naming the file, what is wrong and what is accepted, raised as the caller's own error class
(`RunFormatError`, `GateConfigError`, ...), so the CLI prints it and exits 2. The caps are generous: every file
the suite itself writes stays far below them (each constant says by how much). Files the suite writes and reads
back itself in a child (case specs, the worker protocol) are not doors and do not come here. Leaf module: pandas
and pyarrow are imported only by the table functions.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import pandas as pd

KiB, MiB, GiB = 1024, 1024**2, 1024**3

# meta.json: ~1.2 KB per planned case (its spec, its health figures, its share of a group) + ~10 KB of environment,
# config and calibration: a --quick run of 4 cases writes 11 KB, the main job (24 cases) ~40 KB. 128 MiB is
# ~100,000 cases, over 4000x the main job and more than a week of back-to-back cases; json parses it in ~1.5 GB.
JSON_MAX_BYTES = 128 * MiB
# A gates file: one [[gate]] is 300-500 bytes with its description; bench/analysis/gates.toml (6 gates) is 3 KB.
# 1 MiB holds MAX_GATES gates four times over (room for comments) and tomllib parses it in about a second.
TOML_MAX_BYTES = 1 * MiB
# Gates in one file: the suite's file has 6. Evaluating a gate filters the run's rows (15-50 ms a gate on the
# 2-vCPU VM), so 20,000 gates ran past 5 minutes; 500 is 80x the suite's own and evaluates in well under a minute.
MAX_GATES = 500
# Nesting: meta.json is 5 deep, a gates file 3. 64 stays far below Python's recursion limit (1000), so nothing that
# walks a loaded file recursively (report's meta table, validation) can hit it.
MAX_DEPTH = 64
# results.csv: ~1.1 KB per row (one row per case), so 1 GiB is ~1,000,000 cases; samples.parquet: ~8 bytes per
# timed iteration compressed, so >100 million samples. Both far beyond any run of the suite.
TABLE_MAX_BYTES = 1 * GiB
# A parquet file compresses (a run of one repeated value to almost nothing), so its size alone bounds nothing:
# its decompressed size (in its footer, read first) may be 4x the file cap, the ratio of float samples and
# dictionary-encoded case ids.
PARQUET_MAX_DECODED_BYTES = 4 * GiB
# Rows of a parquet table (from its footer): a float sample takes at least ~5 bytes compressed, so a samples.parquet
# within TABLE_MAX_BYTES holds ~200 million at most; more rows come from run-length-encoded repeats, no measurement.
TABLE_MAX_ROWS = 200_000_000
# The widest table the suite writes (results, bench.schema.COLUMNS) has ~110 columns.
TABLE_MAX_COLUMNS = 1000
# A CSV header line: ~110 names of ~20 characters is ~3 KB.
CSV_HEADER_MAX_BYTES = 1 * MiB
# A cell: the longest the engine writes are `reason`/`profile_reason` (cut to 400 characters), `backend_info` (a
# JSON object of ~1 KB) and a profiled op's input `shapes` (a few KB for a concatenation of many inputs). 64 Ki
# characters is 16x the longest of them; a 10 MB cell is no measurement and cost `report` 12.9 GB.
CELL_MAX_CHARS = 64 * KiB

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def size_text(n: int) -> str:
    """Bytes as a short human size: 128 MiB, 3.2 GiB, 512 bytes."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def _check_stat(st: os.stat_result, path: Path, limit: int, what: str, error: type[Exception]) -> None:
    accepted = f"accepted: {what} as a regular file of at most {size_text(limit)}"
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise error(f"{path}: {kind}, not a regular file; {accepted}")
    if st.st_size > limit:
        raise error(f"{path}: {size_text(st.st_size)}; {accepted}")


def check_file(path: str | os.PathLike, *, limit: int, what: str, error: type[Exception]) -> None:
    """Refuse, without opening it, a path that is not a regular file of at most `limit` bytes."""
    _check_stat(os.stat(path), Path(path), limit, what, error)


def open_regular(path: str | os.PathLike, *, limit: int, what: str, error: type[Exception]) -> IO[bytes]:
    """The file opened for binary reading once it is known to be a regular file of at most `limit` bytes.
    A missing or unreadable path raises the OSError as it is (callers already word those)."""
    p = Path(path)
    _check_stat(os.stat(p), p, limit, what, error)  # refused without opening: a FIFO's open() would block
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_stat(os.fstat(fd), p, limit, what, error)  # the same file, should the path have been swapped
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, *, limit: int, what: str, error: type[Exception]) -> bytes:
    """The whole file, refused beyond `limit` bytes even when stat said less (/proc files, a growing file)."""
    with open_regular(path, limit=limit, what=what, error=error) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: more than {size_text(limit)}; accepted: {what} as a regular file of at most "
                    f"{size_text(limit)}")
    return data


def read_text(path: str | os.PathLike, *, limit: int, what: str, error: type[Exception]) -> str:
    """read_bytes decoded as UTF-8; other bytes are one line, not a UnicodeDecodeError."""
    data = read_bytes(path, limit=limit, what=what, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}); accepted: {what} as UTF-8 text") from None


def _too_deep(path: str | os.PathLike, limit: int, what: str) -> str:
    return f"{path}: nested deeper than {limit} levels; accepted: {what} nested at most {limit} deep"


def check_depth(value: Any, path: str | os.PathLike, what: str, error: type[Exception],
                limit: int = MAX_DEPTH) -> None:
    """Refuse a parsed value whose dicts and lists nest deeper than `limit` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if items is None:
            continue
        if depth > limit:
            raise error(_too_deep(path, limit, what))
        stack.extend((x, depth + 1) for x in items if isinstance(x, (dict, list)))


def parse_nested(parse: Callable[[str], Any], text: str, path: str | os.PathLike, what: str,
                 error: type[Exception], limit: int = MAX_DEPTH) -> Any:
    """`parse(text)` (json.loads, tomllib.loads) with the depth cap: a parser that recurses past Python's limit is
    refused with the same line as a value nested past `limit`. The parser's own errors propagate."""
    try:
        value = parse(text)
    except RecursionError:
        raise error(_too_deep(path, limit, what)) from None
    check_depth(value, path, what, error, limit)
    return value


def load_json(path: str | os.PathLike, *, what: str, error: type[Exception], limit: int | None = None) -> Any:
    """A JSON file, bounded (regular file, at most `limit` or JSON_MAX_BYTES, UTF-8, depth); invalid JSON is
    `error` "unreadable (...)"."""
    text = read_text(path, limit=limit or JSON_MAX_BYTES, what=what, error=error)
    try:
        return parse_nested(json.loads, text, path, what, error)
    except ValueError as e:
        if isinstance(e, error):
            raise
        raise error(f"{path}: unreadable ({e})".splitlines()[0]) from None


def check_columns(names: list, path: str | os.PathLike, error: type[Exception]) -> None:
    """At most TABLE_MAX_COLUMNS columns, no column name over CELL_MAX_CHARS."""
    if len(names) > TABLE_MAX_COLUMNS:
        raise error(f"{path}: {len(names):,} columns; accepted: a table of at most {TABLE_MAX_COLUMNS:,} columns")
    for name in names:
        if len(str(name)) > CELL_MAX_CHARS:
            raise error(f"{path}: a column name of {len(str(name)):,} characters; accepted: names and cells of at "
                        f"most {CELL_MAX_CHARS:,} characters")


def check_cells(df: pd.DataFrame, path: str | os.PathLike, error: type[Exception],
                limit: int = CELL_MAX_CHARS) -> None:
    """No text cell longer than `limit` characters (numbers, bools and dates are bounded by their type)."""
    check_columns(list(df.columns), path, error)
    for col in df.columns:
        s = df[col]
        if s.dtype.kind in "biufcmM":
            continue
        try:
            lengths = s.str.len()
        except AttributeError:  # an object column that is not all text: measure what is text
            lengths = s.map(lambda v: len(v) if isinstance(v, (str, bytes)) else 0)
        lengths = lengths.fillna(0).to_numpy(dtype="int64", na_value=0)
        if len(lengths) and lengths.max() > limit:
            row = int(lengths.argmax())
            raise error(f"{path}: row {row + 1}, column {col!r}: a cell of {int(lengths[row]):,} characters; "
                        f"accepted: cells of at most {limit:,} characters")


def _check_parquet_footer(f: IO[bytes], path: Path, error: type[Exception]) -> None:
    """Columns and decompressed size from the parquet footer, before any data page is read."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(f).metadata
    check_columns(list(meta.schema.names), path, error)
    if meta.num_rows > TABLE_MAX_ROWS:
        raise error(f"{path}: {meta.num_rows:,} rows; accepted: a parquet table of at most {TABLE_MAX_ROWS:,} rows")
    decoded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if decoded > PARQUET_MAX_DECODED_BYTES:
        raise error(f"{path}: {size_text(decoded)} once decompressed; accepted: a parquet table of at most "
                    f"{size_text(PARQUET_MAX_DECODED_BYTES)} decompressed")


def _check_csv_header(f: IO[bytes], path: Path, error: type[Exception]) -> None:
    """The header line is read alone and bounded: a line of a billion commas would be a billion columns."""
    head = f.read(CSV_HEADER_MAX_BYTES)
    end = head.find(b"\n")
    if end < 0 and len(head) == CSV_HEADER_MAX_BYTES:
        raise error(f"{path}: a header line longer than {size_text(CSV_HEADER_MAX_BYTES)}; accepted: a CSV table "
                    f"whose first line names at most {TABLE_MAX_COLUMNS:,} columns")
    count = head[:end if end >= 0 else len(head)].count(b",") + 1  # quoted commas only over-count
    if count > TABLE_MAX_COLUMNS:
        raise error(f"{path}: {count:,} columns; accepted: a table of at most {TABLE_MAX_COLUMNS:,} columns")


def read_table(path: str | os.PathLike, *, kind: str, error: type[Exception]) -> pd.DataFrame:
    """A .parquet or .csv table (`kind`: "results", "samples", "A/B results", ...) within every bound above. Bounds
    and a corrupt file (pyarrow and pandas raise many kinds) are both one `error` line."""
    import pandas as pd

    p = Path(path)
    what = f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind} file"
    try:
        with open_regular(p, limit=TABLE_MAX_BYTES, what=what, error=error) as f:
            if p.suffix == ".parquet":
                _check_parquet_footer(f, p, error)
                f.seek(0)
                df = pd.read_parquet(f)
            else:
                _check_csv_header(f, p, error)
                f.seek(0)
                df = pd.read_csv(f)
    except error:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt table, whatever the reader raised
        raise error(f"{p}: unreadable {kind} file ({type(e).__name__}: {e})".splitlines()[0]) from None
    check_cells(df, p, error)
    return df
