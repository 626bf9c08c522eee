"""Demonstration pools: labelled examples loaded from a file, validated and de-duplicated.

A pool file is one of
- JSONL (`.jsonl`, `.ndjson`): one object per line, `{"input": ..., "output": ...}`; other keys
  are kept in `Example.extra`;
- CSV or TSV (`.csv`, `.tsv`) with a header row; the two columns are named by `input_field` and
  `output_field`, the other columns are kept in `extra`;
- a JSON array (`.json`): objects with the two fields, or alpaca-format records
  (`instruction`, optional `input`, `output`), whose input becomes the instruction followed by
  the input.

The task description of a JSONL/CSV/TSV pool lives in a sidecar file with the same stem,
`<name>.json` holding `{"task": "..."}`, so the pool itself stays plain rows any tool can read.
The built-in pools under `retrieval/pools/` follow this layout.

Rows are checked one by one (see `retrieval.rows`, which also caps their size); a file with bad
rows is refused with a `BadRowsError` naming the first few and their line numbers, unless
`skip_bad` is set, in which case the pool reports how many rows it skipped. The message names no
way to skip them: the callers differ (`retrieval build --skip-bad`, a checkbox in the UI, none in
`bot` or `lab`), so each adds its own hint. Exact duplicates (same input and output) are dropped,
the first one kept. `Pool.notes` says what a user should know about how the file was read.
A number in a JSON field is read as its text (`1` as "1"), as a CSV cell would be.
This module reads files; it knows nothing about embeddings or indexes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.rows import MissingColumnError, PoolError, RowError, read_rows

BUILTIN_DIR = Path(__file__).resolve().parent / "pools"
MAX_ERRORS_SHOWN = 5
MAX_CLASS_IDS = 20
"""Most distinct numeric outputs a pool may have for `Pool.notes` to call them class ids."""
NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")

__all__ = ["BUILTIN_DIR", "BadRowsError", "Example", "MissingColumnError", "Pool", "PoolError", "builtin_pools",
           "load_pool"]


class BadRowsError(PoolError):
    """A pool file with rows that fail the checks; a caller that can skip them says how."""


@dataclass(frozen=True)
class Example:
    """One demonstration: what the user says and what the assistant should answer."""

    id: int
    """Position in the pool, and the id the FAISS index returns for it."""
    input: str
    """The text that is embedded and matched against queries."""
    output: str
    """The answer shown after the input in a demonstration."""
    extra: dict = field(default_factory=dict)
    """Any other fields of the source row, kept as they were."""

    def __post_init__(self):
        if not isinstance(self.id, int) or self.id < 0:
            raise ValueError(f"Example.id must be a non-negative int, got {self.id!r}")
        if not isinstance(self.input, str) or not self.input.strip():
            raise ValueError(f"Example.input must be non-empty text, got {self.input!r}")
        if not isinstance(self.output, str):
            raise ValueError(f"Example.output must be text, got {type(self.output).__name__}")

    def to_record(self) -> dict:
        """The row as written to an index's examples file."""
        return {"id": self.id, "input": self.input, "output": self.output, "extra": self.extra}


@dataclass
class Pool:
    """The examples of one pool, with where they came from."""

    examples: list[Example]
    """Examples in file order; `examples[i].id == i`."""
    task: str | None
    """Task description shown to the model before the demonstrations, if the pool has one."""
    source: str
    """The file the pool was read from (or a name for pools built in memory)."""
    sha256: str = ""
    """Hash of the examples' content (see `content_sha256`); filled in when left empty."""
    skipped: int = 0
    """Bad rows left out because `skip_bad` was set."""
    duplicates: int = 0
    """Exact duplicate rows dropped."""

    def __post_init__(self):
        for position, example in enumerate(self.examples):
            if example.id != position:
                raise ValueError(f"Pool.examples: example at position {position} has id {example.id}")
        if not self.sha256:
            self.sha256 = content_sha256(self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def notes(self) -> list[str]:
        """What a user should know about how the file was read: rows left out, and outputs that
        look like class ids (the model copies the answers it is shown, so it would answer "0" or "1")."""
        notes = []
        if self.skipped:
            notes.append(f"{self.skipped} bad {'row' if self.skipped == 1 else 'rows'} skipped")
        if self.duplicates:
            notes.append(f"{self.duplicates} {'duplicate' if self.duplicates == 1 else 'duplicates'} dropped")
        ids = class_ids(self.examples)
        if ids:
            shown = ", ".join(ids[:6]) + (", ..." if len(ids) > 6 else "")
            notes.append(f"every output is a number ({shown}), so the bot will answer with these numbers; "
                         "write label words in the pool to have it answer in words")
        return notes

    def ids_with_input(self, text: str) -> set[int]:
        """Ids of the examples whose input is `text` (ignoring surrounding whitespace)."""
        wanted = text.strip()
        return {example.id for example in self.examples if example.input.strip() == wanted}


def class_ids(examples: list[Example]) -> list[str]:
    """The outputs in numeric order when every one is a number and they repeat, at most
    `MAX_CLASS_IDS` distinct values, as class labels written as ids do; otherwise []."""
    values = {example.output.strip() for example in examples}
    if not values or len(values) > MAX_CLASS_IDS or len(values) == len(examples):
        return []
    if not all(NUMBER.fullmatch(value) for value in values):
        return []
    return sorted(values, key=float)


def content_sha256(examples: list[Example]) -> str:
    """sha256 of the examples' canonical JSON lines: the same rows give the same hash in any file format."""
    digest = hashlib.sha256()
    for example in examples:
        row = {"input": example.input, "output": example.output, "extra": example.extra}
        digest.update(json.dumps(row, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
    return digest.hexdigest()


def load_pool(
    path: str | Path,
    input_field: str = "input",
    output_field: str = "output",
    skip_bad: bool = False,
    task: str | None = None,
) -> Pool:
    """Read, validate and de-duplicate a pool file; `task` overrides the sidecar's description."""
    path = Path(path)
    if path.is_dir():
        raise PoolError(f"'{path}' is a folder; give a pool file (.jsonl, .csv, .tsv or .json)")
    if not path.is_file():
        raise PoolError(f"pool file '{path}' does not exist")
    rows, errors = read_rows(path, input_field, output_field)
    if errors and not skip_bad:
        raise BadRowsError(_describe_errors(path, errors))
    if not rows:
        raise PoolError(f"{path.name}: no valid rows" + (f" ({len(errors)} bad rows skipped)" if errors else ""))
    examples, duplicates = _deduplicate(rows)
    return Pool(
        examples=examples,
        task=task if task is not None else _sidecar_task(path),
        source=str(path),
        skipped=len(errors),
        duplicates=duplicates,
    )


def _describe_errors(path: Path, errors: list[RowError]) -> str:
    shown = "; ".join(f"line {error.line}: {error.message}" for error in errors[:MAX_ERRORS_SHOWN])
    more = f" (first {MAX_ERRORS_SHOWN} shown)" if len(errors) > MAX_ERRORS_SHOWN else ""
    rows = "row" if len(errors) == 1 else "rows"
    return f"{path.name}: {len(errors)} bad {rows}{more}: {shown}"


def _deduplicate(rows: list[tuple[str, str, dict]]) -> tuple[list[Example], int]:
    seen: set[tuple[str, str]] = set()
    examples: list[Example] = []
    for text, answer, extra in rows:
        if (text, answer) in seen:
            continue
        seen.add((text, answer))
        examples.append(Example(id=len(examples), input=text, output=answer, extra=extra))
    return examples, len(rows) - len(examples)


def _sidecar_task(path: Path) -> str | None:
    """The task description from `<name>.json` beside a JSONL/CSV/TSV pool, if there is one."""
    sidecar = path.with_suffix(".json")
    if path.suffix == ".json" or not sidecar.is_file():
        return None
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PoolError(f"{sidecar.name}: the task sidecar is not valid UTF-8 JSON ({error})") from error
    if not isinstance(meta, dict) or not isinstance(meta.get("task"), str):
        raise PoolError(f'{sidecar.name}: the task sidecar must be an object like {{"task": "..."}}')
    return meta["task"]


def builtin_pools() -> dict[str, Path]:
    """The pools that ship with the project, by name (the file stem)."""
    return {path.stem: path for path in sorted(BUILTIN_DIR.glob("*.jsonl"))}
