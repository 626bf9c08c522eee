"""Read the rows of a pool file (JSONL, CSV/TSV or a JSON array) and check each one.

Every reader returns the good rows as `(input, output, extra)` tuples and the bad ones as
`RowError`s with the line number a user would look at in an editor (1-based; for a JSON array
the line where the record starts). Files must be UTF-8; a byte-order mark is accepted.
De-duplication and the `Pool` dataclass live in `retrieval.pool`; this module only parses.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

Row = tuple[str, str, dict]
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".json": "json"}
ALPACA_FIELDS = ("instruction", "input", "output")


class PoolError(ValueError):
    """A pool file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class RowError:
    line: int
    """1-based line number in the file."""
    message: str


def read_rows(path: Path, input_field: str, output_field: str) -> tuple[list[Row], list[RowError]]:
    """Parse a pool file by its suffix; raise PoolError for problems with the file as a whole."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise PoolError(f"{path.name}: unknown pool format '{path.suffix}'; use one of: {', '.join(FORMATS)}")
    text = _read_utf8(path)
    if not text.strip():
        raise PoolError(f"{path.name}: the pool file is empty")
    if kind == "jsonl":
        return _jsonl_rows(text, input_field, output_field)
    if kind == "json":
        return _json_array_rows(path, text, input_field, output_field)
    return _table_rows(path, text, "\t" if kind == "tsv" else ",", input_field, output_field)


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise PoolError(
            f"{path.name}: not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}); save the file as UTF-8"
        ) from error


def check_row(record: object, input_field: str, output_field: str) -> Row | str:
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
    extra = {key: value for key, value in record.items() if key not in (input_field, output_field)}
    return values[0], values[1], extra


def _collect(numbered: list[tuple[int, object]], input_field: str, output_field: str):
    rows, errors = [], []
    for line, record in numbered:
        checked = record if isinstance(record, RowError) else check_row(record, input_field, output_field)
        if isinstance(checked, RowError):
            errors.append(checked)
        elif isinstance(checked, str):
            errors.append(RowError(line, checked))
        else:
            rows.append(checked)
    return rows, errors


def _jsonl_rows(text: str, input_field: str, output_field: str):
    numbered: list[tuple[int, object]] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            numbered.append((line, json.loads(raw)))
        except json.JSONDecodeError as error:
            numbered.append((line, RowError(line, f"not valid JSON ({error.msg} at column {error.colno})")))
    return _collect(numbered, input_field, output_field)


def _json_array_rows(path: Path, text: str, input_field: str, output_field: str):
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise PoolError(f"{path.name}: not valid JSON ({error.msg} at line {error.lineno})") from error
    if not isinstance(records, list):
        raise PoolError(f"{path.name}: expected a JSON array of records, got {type(records).__name__}")
    lines = _record_start_lines(text, len(records))
    numbered = [(lines[i], _from_alpaca(record, input_field)) for i, record in enumerate(records)]
    return _collect(numbered, input_field, output_field)


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


def _table_rows(path: Path, text: str, delimiter: str, input_field: str, output_field: str):
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = reader.fieldnames or []
    for name in (input_field, output_field):
        if name not in header:
            flag = "--input-field" if name == input_field else "--output-field"
            raise PoolError(
                f"{path.name}: the header has no column '{name}' (columns: {', '.join(header)}); choose one with {flag}"
            )
    numbered: list[tuple[int, object]] = []
    for record in reader:
        if None in record:
            numbered.append((reader.line_num, RowError(reader.line_num, "more cells than header columns")))
            continue
        if any(value is None for value in record.values()):
            numbered.append((reader.line_num, RowError(reader.line_num, "fewer cells than header columns")))
            continue
        numbered.append((reader.line_num, record))
    return _collect(numbered, input_field, output_field)
