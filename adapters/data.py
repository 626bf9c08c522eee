"""Read instruction data into chat conversations.

Accepted record shapes, in a `.jsonl` file (one record a line) or a `.json` file (a list), and
pool tables, `.csv` / `.tsv` with `input` and `output` columns, read as pools are (`retrieval.rows`):
- the project's pool format: `{"input": ..., "output": ...}`;
- alpaca: `{"instruction": ..., "input": ..., "output": ..., "system"?: ...}`;
- OpenAI chat: `{"messages": [{"role": ..., "content": ...}, ...]}`;
- ShareGPT: `{"conversations": [{"from": "human" | "gpt" | "system", "value": ...}, ...]}`.

Every record becomes a list of `{"role", "content"}` messages. `{{key}}` placeholders are filled
from `fill` (identity data ships as `I am {{name}}`). Tokens and loss masks are `encode.py`'s job.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
ROLES = ("system", "user", "assistant")
PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


FORMATS = (".jsonl", ".json", ".csv", ".tsv")
"""The data files read here: JSONL (also any other suffix), a JSON list, or a pool table."""


class DataError(ValueError):
    """A data file or record that cannot be turned into a conversation; the message says where."""


def read_records(path: Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        raise DataError(f"data file '{path}' is a folder; give the file inside it")
    if not path.is_file():
        raise DataError(f"data file '{path}' does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark, as Windows editors write, is not data
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start} cannot be decoded); save it as UTF-8") from None
    if path.suffix.lower() in (".csv", ".tsv"):
        return _table_records(path)
    if path.suffix.lower() == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}") from None
        if not isinstance(records, list):
            raise DataError(f"{path}: a .json data file must hold a list of records")
        return records
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if not records and text.lstrip().startswith("["):
                raise DataError(f"{path} holds a JSON list, written over several lines; name the file .json, or "
                                "write one record per line") from None
            raise DataError(f"{path}: line {number} is not JSON: {error.msg} (column {error.colno})") from None
    return records


def _table_records(path: Path) -> list[dict]:
    """A CSV/TSV pool as `{"input", "output"}` records; a bad row is named by its line, as for a pool."""
    from retrieval.rows import MissingColumnError, PoolError, read_rows

    try:
        rows, errors = read_rows(path, "input", "output", max_chars=None)  # long rows are cut by --max-length
    except MissingColumnError as error:
        raise DataError(f"{error}; a table of training data needs the columns 'input' and 'output'") from None
    except PoolError as error:
        raise DataError(str(error)) from None
    if errors:
        raise DataError(f"{path}: line {errors[0].line}: {errors[0].message}")
    return [{"input": text, "output": answer} for text, answer, _ in rows]


def to_messages(record: dict) -> list[dict]:
    """One record, in any accepted shape, as chat messages; a missing or non-text field is an error naming it."""
    if not isinstance(record, dict):
        raise DataError(f"expected an object (a JSON record with named fields), got {_kind(record)}; a JSON list of "
                        "records belongs in a .json file, one record per line in a .jsonl file")
    if "messages" in record:
        return [{"role": _text(m, "role", "a message"), "content": _text(m, "content", "a message")}
                for m in _list(record, "messages")]
    if "conversations" in record:
        return [_sharegpt_turn(turn) for turn in _list(record, "conversations")]
    if "instruction" in record:
        what = "an alpaca record (it has 'instruction')"
        prompt = _text(record, "instruction", what)
        if record.get("input"):
            prompt = f"{prompt}\n\n{_text(record, 'input', what)}"
        system = [{"role": "system", "content": _text(record, "system", what)}] if record.get("system") else []
        return system + [{"role": "user", "content": prompt},
                         {"role": "assistant", "content": _text(record, "output", what)}]
    if "input" in record and "output" in record:
        return [{"role": "user", "content": _text(record, "input", "a record")},
                {"role": "assistant", "content": _text(record, "output", "a record")}]
    raise DataError(
        f"unknown record shape with keys {sorted(record)}; expected input/output, instruction/input/output, "
        "messages or conversations"
    )


def _kind(value) -> str:
    """What a JSON value is, in words."""
    kinds = {dict: "an object", list: "a list", str: "text", type(None): "null", bool: "true/false"}
    return kinds.get(type(value), "a number")


def _text(mapping, key: str, what: str) -> str:
    """`mapping[key]` as text (a number reads as it is written, as pools read it); else an error
    naming the field and what holds it."""
    if not isinstance(mapping, dict):
        raise DataError(f"{what} must be an object with '{key}', got {_kind(mapping)}")
    if key not in mapping:
        raise DataError(f"{what} has no '{key}' field (its fields: {', '.join(sorted(mapping)) or 'none'})")
    value = mapping[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"'{key}' must be text, got {_kind(value)}")
    return value


def _list(record: dict, key: str) -> list:
    if not isinstance(record[key], list):
        raise DataError(f"'{key}' must be a list of turns, got {_kind(record[key])}")
    return record[key]


def _sharegpt_turn(turn: dict) -> dict:
    if not isinstance(turn, dict):
        raise DataError(f"a ShareGPT turn must be an object with 'from' and 'value', got {_kind(turn)}")
    role = SHAREGPT_ROLES.get(turn.get("from", ""))
    if role is None:
        raise DataError(f"ShareGPT turn has unknown 'from': {turn.get('from')!r}; expected one of {sorted(SHAREGPT_ROLES)}")
    return {"role": role, "content": _text(turn, "value", "a ShareGPT turn")}


def fill_placeholders(text: str, fill: dict[str, str]) -> str:
    """Replace `{{key}}` with `fill[key]`; a placeholder without a value is an error naming it."""

    def value(match: re.Match) -> str:
        key = match.group(1)
        if key not in fill:
            raise DataError(f"placeholder {{{{{key}}}}} has no value; pass --fill {key}=...")
        return fill[key]

    return PLACEHOLDER.sub(value, text)


def load_conversations(path: Path, fill: dict[str, str] | None = None) -> list[list[dict]]:
    """All records of a data file as checked conversations, placeholders filled."""
    conversations = []
    for number, record in enumerate(read_records(path), start=1):
        try:
            messages = [
                {"role": m["role"], "content": fill_placeholders(m["content"], fill or {})} for m in to_messages(record)
            ]
            _check(messages)
        except (DataError, KeyError, TypeError) as error:
            raise DataError(f"{path}: record {number}: {error}") from error
        conversations.append(messages)
    if not conversations:
        raise DataError(f"data file '{path}' holds no records")
    return conversations


def _check(messages: list[dict]) -> None:
    for message in messages:
        if message["role"] not in ROLES:
            raise DataError(f"unknown role {message['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise DataError(f"message content must be text, got {type(message['content']).__name__}")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError("a conversation needs at least one assistant message to learn from")
