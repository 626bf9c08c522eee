"""Read the rows of a pool file (JSONL, CSV/TSV or a JSON array) and check each one.

Every reader returns the good rows as `(input, output, extra)` tuples and the bad ones as
`RowError`s with the line number a user would look at in an editor (1-based; for a JSON array
the line where the record starts). Files must be UTF-8; a byte-order mark is accepted.

Sizes are capped so that a hostile or mistaken file (pools are also uploaded through the web UI)
cannot exhaust memory: a file over `MAX_POOL_BYTES` is refused unread, a JSONL line over
`MAX_LINE_BYTES` is reported as a bad row without being parsed (JSONL is read line by line), and
a row whose input and output together exceed `MAX_RECORD_CHARS` is a bad row.
De-duplication and the `Pool` dataclass live in `retrieval.pool`; this module only parses.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

Row = tuple[str, str, dict]
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".json": "json"}
ALPACA_FIELDS = ("instruction", "input", "output")
MAX_RECORD_CHARS = 20_000
"""Most characters of input plus output in one row: a longer demonstration crowds the prompt out
of any context window, and embedding it costs memory out of all proportion."""
MAX_LINE_BYTES = 256 * 1024
"""Most bytes in one JSONL line, other fields and JSON escapes included (a 20,000-character row
written with `\\uXXXX` escapes takes 120,000); a longer line is skipped unread."""
MAX_POOL_BYTES = 256 * 1024 * 1024
"""Largest pool file read (about a million short rows). CSV/TSV files and JSON arrays are parsed
whole, so this bounds the memory one file can take."""


class PoolError(ValueError):
    """A pool file that cannot be used; the message names the file and what is wrong."""


class MissingColumnError(PoolError):
    """A table without the named input or output column; a caller that can name another says how."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field
        """"input" or "output": which of the two fields named a missing column."""


@dataclass(frozen=True)
class RowError:
    line: int
    """1-based line number in the file."""
    message: str


def read_rows(path: Path, input_field: str, output_field: str,
              max_chars: int | None = MAX_RECORD_CHARS) -> tuple[list[Row], list[RowError]]:
    """Parse a pool file by its suffix; raise PoolError for problems with the file as a whole.
    `max_chars` bounds a row's input and output together (None: no bound, for training data, which
    the trainer cuts by tokens)."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise PoolError(f"{path.name}: unknown pool format '{path.suffix}'; use one of: {', '.join(FORMATS)}")
    size = path.stat().st_size
    if size > MAX_POOL_BYTES:
        raise PoolError(f"{path.name}: the file is {size:,} bytes; the limit for a pool is {MAX_POOL_BYTES:,} bytes")
    if kind == "jsonl":
        return _jsonl_rows(path, input_field, output_field, max_chars)
    text = _read_utf8(path)
    if not text.strip():
        raise _empty(path)
    if kind == "json":
        return _json_array_rows(path, text, input_field, output_field, max_chars)
    return _table_rows(path, text, "\t" if kind == "tsv" else ",", input_field, output_field, max_chars)


def _empty(path: Path) -> PoolError:
    return PoolError(f"{path.name}: the pool file is empty")


def _read_utf8(path: Path) -> str:
    return _decode(path, path.read_bytes(), first_line=1)


def _decode(path: Path, data: bytes, first_line: int) -> str:
    """`data` (the file from line `first_line` on) as text; a byte-order mark is dropped from line 1."""
    try:
        return data.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as error:
        line = first_line + data[: error.start].count(b"\n")
        raise PoolError(
            f"{path.name}: not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}); save the file as UTF-8"
        ) from error


def check_row(record: object, input_field: str, output_field: str,
              max_chars: int | None = MAX_RECORD_CHARS) -> Row | str:
    """A valid row, or the message saying why the record is not one."""
    if not isinstance(record, dict):
        return f"expected an object with '{input_field}' and '{output_field}', got {type(record).__name__}"
    values = []
    for name in (input_field, output_field):
        if name not in record:
            return f"missing field '{name}'"
        value = record[name]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return f"field '{name}' must be text, got {type(value).__name__}"
        values.append(value)
    for name, value in zip((input_field, output_field), values):
        if not value.strip():
            return f"field '{name}' is empty"
    length = len(values[0]) + len(values[1])
    if max_chars is not None and length > max_chars:
        return f"input and output are {length:,} characters; the limit is {max_chars:,} per row"
    extra = {key: value for key, value in record.items() if key not in (input_field, output_field)}
    return values[0], values[1], extra


def _collect(numbered: list[tuple[int, object]], input_field: str, output_field: str, max_chars: int | None):
    rows, errors = [], []
    for line, record in numbered:
        checked = record if isinstance(record, RowError) else check_row(record, input_field, output_field, max_chars)
        if isinstance(checked, RowError):
            errors.append(checked)
        elif isinstance(checked, str):
            errors.append(RowError(line, checked))
        else:
            rows.append(checked)
    return rows, errors


def _jsonl_rows(path: Path, input_field: str, output_field: str, max_chars: int | None):
    numbered: list[tuple[int, object]] = []
    with path.open("rb") as handle:
        for line, data in enumerate(_bounded_lines(handle), start=1):
            if data is None:
                numbered.append((line, RowError(line, f"over {MAX_LINE_BYTES:,} bytes, the limit for one row")))
                continue
            raw = _decode(path, data.rstrip(b"\r\n"), first_line=line)  # JSON columns count within the line
            if not raw.strip():
                continue
            try:
                numbered.append((line, json.loads(raw)))
            except json.JSONDecodeError as error:
                numbered.append((line, RowError(line, f"not valid JSON ({error.msg} at column {error.colno})")))
    if not numbered:
        raise _empty(path)
    return _collect(numbered, input_field, output_field, max_chars)


def _bounded_lines(handle: BinaryIO) -> Iterator[bytes | None]:
    """Each line of a binary file, or None for a line over MAX_LINE_BYTES, which is passed over
    in 1 MiB pieces so that its length costs no memory."""
    while data := handle.readline(MAX_LINE_BYTES + 1):
        if len(data) <= MAX_LINE_BYTES or data.endswith(b"\n"):
            yield data
            continue
        while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
            pass
        yield None


def _json_array_rows(path: Path, text: str, input_field: str, output_field: str, max_chars: int | None):
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise PoolError(f"{path.name}: not valid JSON ({error.msg} at line {error.lineno})") from error
    if not isinstance(records, list):
        raise PoolError(f"{path.name}: expected a JSON array of records, got {type(records).__name__}")
    lines = _record_start_lines(text, len(records))
    numbered = [(lines[i], _from_alpaca(record, input_field)) for i, record in enumerate(records)]
    return _collect(numbered, input_field, output_field, max_chars)


def _from_alpaca(record: object, input_field: str) -> object:
    """An alpaca record (`instruction`, `input`, `output`) as a plain input/output record."""
    if not isinstance(record, dict) or "instruction" not in record or input_field != "input":
        return record
    instruction, context = record.get("instruction"), record.get("input") or ""
    if not isinstance(instruction, str) or not isinstance(context, str):
        return {"output": record.get("output")}  # check_row reports the missing input
    merged = {key: value for key, value in record.items() if key not in ALPACA_FIELDS}
    merged["input"] = f"{instruction}\n\n{context}" if context.strip() else instruction
    merged["output"] = record.get("output")
    if "output" not in record:
        del merged["output"]
    return merged


def _record_start_lines(text: str, count: int) -> list[int]:
    """Line on which each top-level record of a JSON array starts (approximate for odd layouts)."""
    decoder, lines, position = json.JSONDecoder(), [], text.index("[") + 1
    for _ in range(count):
        while text[position] in " \t\r\n,":
            position += 1
        lines.append(text.count("\n", 0, position) + 1)
        _, position = decoder.raw_decode(text, position)
    return lines


def _table_rows(path: Path, text: str, delimiter: str, input_field: str, output_field: str, max_chars: int | None):
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # a long cell is data, as in a JSONL pool
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        return _table_records(path, reader, input_field, output_field, max_chars)
    except csv.Error as error:  # e.g. a cell over csv.field_size_limit(); the reader cannot resume after it
        # the inner reader's line number: DictReader updates its own only after a good row
        raise PoolError(f"{path.name}: line {reader.reader.line_num}: not readable as a table ({error})") from error


def _table_records(path: Path, reader: csv.DictReader, input_field: str, output_field: str, max_chars: int | None):
    header = reader.fieldnames or []
    for name in (input_field, output_field):
        if name not in header:
            raise MissingColumnError(f"{path.name}: the header has no column '{name}' (columns: {', '.join(header)})",
                                     "input" if name == input_field else "output")
    numbered: list[tuple[int, object]] = []
    for record in reader:
        if None in record:
            numbered.append((reader.line_num, RowError(reader.line_num, "more cells than header columns")))
            continue
        if any(value is None for value in record.values()):
            numbered.append((reader.line_num, RowError(reader.line_num, "fewer cells than header columns")))
            continue
        numbered.append((reader.line_num, record))
    return _collect(numbered, input_field, output_field, max_chars)
