"""Bad and hostile input, one function per case: each does what a user or client would do and
returns the message the user sees. tests/test_hostile_input.py checks each against the catalogue
in RELIABILITY.md's words."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def error_of(action) -> str:
    try:
        action()
    except ValueError as error:
        return str(error)
    raise AssertionError("no error was raised")


def pool_file(folder: Path, name: str, content: bytes | str) -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def load(path, **kwargs):
    from retrieval.pool import load_pool

    return lambda: load_pool(path, **kwargs)


def cases(folder: Path, service, library) -> dict:
    """Case name -> zero-argument function returning the user's message."""
    from adapters.config import check_adapter_name
    from adapters.metadata import CONFIG_FILE
    from adapters.publish import check_target
    from bot.conversation import build_messages
    from bot.service import FewShot
    from bot.settings import GenerationSettings
    from retrieval.library import check_name
    from retrieval.storage import check_writable

    good = '{"input": "fine", "output": "positive"}\n'

    def chat(message="hi", **kwargs):
        return lambda: list(service.chat(message, None, None, GenerationSettings(max_new_tokens=2), **kwargs))

    return {
        "malformed JSONL line": lambda: error_of(load(pool_file(folder, "a.jsonl", good + '{"input": "x", \n'))),
        "JSONL row missing its output": lambda: error_of(load(pool_file(folder, "b.jsonl", good + '{"input": "x"}\n'))),
        "JSONL row that is not an object": lambda: error_of(load(pool_file(folder, "c.jsonl", good + "[1, 2]\n"))),
        "empty pool file": lambda: error_of(load(pool_file(folder, "d.jsonl", ""))),
        "pool file of blank lines": lambda: error_of(load(pool_file(folder, "e.jsonl", "\n\n  \n"))),
        "Latin-1 pool file": lambda: error_of(load(pool_file(folder, "f.jsonl", '{"input": "caf\xe9"}'.encode("latin-1")))),
        "UTF-16 pool file": lambda: error_of(load(pool_file(folder, "g.jsonl", good.encode("utf-16")))),
        "CSV without the named column": lambda: error_of(
            load(pool_file(folder, "h.csv", "text,label\nfine,positive\n"), input_field="sentence")),
        "CSV with an empty output": lambda: error_of(load(pool_file(folder, "i.csv", "input,output\nfine,\n"))),
        "alpaca JSON that is not an array": lambda: error_of(load(pool_file(folder, "j.json", '{"instruction": 1}'))),
        "unknown pool format": lambda: error_of(load(pool_file(folder, "k.xlsx", "x"))),
        "missing pool file": lambda: error_of(load(folder / "nowhere.jsonl")),
        "oversized upload": lambda: error_of(lambda: library.build_from_upload(
            "big", pool_file(folder, "big.jsonl", good * (library.max_upload_bytes // len(good) + 1)))),
        "index name with path traversal": lambda: error_of(lambda: check_name("../../etc")),
        "index name that is an absolute path": lambda: error_of(lambda: check_name("/etc/passwd")),
        "index name through a symlink out of the data folder": lambda: error_of(symlinked_index(folder, library)),
        "k larger than the pool": lambda: error_of(chat("hi", fewshot=FewShot("sentiment", k=500))),
        "negative k": lambda: error_of(lambda: FewShot("sentiment", k=-1)),
        "negative demonstration seed": lambda: error_of(lambda: FewShot("sentiment", select="random", seed=-1)),
        "unknown selection": lambda: error_of(chat("hi", fewshot=FewShot("sentiment", select="telepathy"))),
        "permutation that is not one": lambda: error_of(
            chat("hi", fewshot=FewShot("sentiment", k=3, order="permutation", permutation=(0, 0, 1)))),
        "empty message": lambda: error_of(chat("   ")),
        "prompt beyond the context window": lambda: error_of(lambda: service.generator.fit(
            build_messages("word " * 5000), GenerationSettings(max_new_tokens=16))),
        "NaN temperature": lambda: error_of(lambda: GenerationSettings(temperature=math.nan)),
        "negative max_new_tokens": lambda: error_of(lambda: GenerationSettings(max_new_tokens=-5)),
        "top_p above 1": lambda: error_of(lambda: GenerationSettings(top_p=1.5)),
        "unknown adapter": lambda: error_of(chat("hi", adapter="pirate")),
        "unknown model id offline": lambda: error_of(unknown_model),
        "model folder without weights": lambda: error_of(lambda: empty_model_folder(folder)),
        "pool row beyond the length limit": lambda: error_of(load(pool_file(
            folder, "l.jsonl", json.dumps({"input": "x" * 19990, "output": "positive words"}) + "\n"))),
        "index written over a folder that is not one": lambda: error_of(lambda: check_writable(someones_folder(folder))),
        "adapter written over a folder that is not one": lambda: error_of(
            lambda: check_target(someones_folder(folder), CONFIG_FILE, "an adapter")),
        "output folder below a file": lambda: error_of(
            lambda: check_target(pool_file(folder, "notes.txt", "mine") / "adapter", CONFIG_FILE, "an adapter")),
        "adapter name that is a path": lambda: error_of(lambda: check_adapter_name("../../etc")),
        "adapter named like the base model": lambda: error_of(lambda: check_adapter_name("base")),
    }


def someones_folder(folder: Path) -> Path:
    """A folder of the user's own files, where an output must not land."""
    (folder / "thesis").mkdir(exist_ok=True)
    (folder / "thesis" / "chapter1.txt").write_text("years of work")
    return folder / "thesis"


def symlinked_index(folder: Path, library):
    """A link named like an index inside the indexes folder, pointing outside it."""
    outside = folder / "outside-index"
    outside.mkdir(exist_ok=True)
    (outside / "meta.json").write_text(json.dumps({"note": "not ours"}))
    library.root.mkdir(parents=True, exist_ok=True)
    link = library.root / "escape"
    if not link.exists():
        os.symlink(outside, link)
    return lambda: library.get("escape")


def unknown_model():
    from bot.models import resolve_model

    resolve_model("no-such-org/no-such-model")


def empty_model_folder(folder: Path):
    from bot.models import resolve_model

    empty = folder / "empty-model"
    empty.mkdir(exist_ok=True)
    resolve_model(str(empty))
