"""The catalogue of bad and hostile input (RELIABILITY.md): each case gives exactly this message.

`{dir}` stands for the test's temporary folder."""

import pytest

from bot.generation import Generator
from bot.service import ChatService
from hostile_cases import cases
from retrieval.embedder import HashEmbedder
from retrieval.library import PoolLibrary

CATALOGUE = {
    "malformed JSONL line": "a.jsonl: 1 bad row: line 2: not valid JSON (Expecting property name enclosed in double "
                            "quotes at column 16)",
    "JSONL row missing its output": "b.jsonl: 1 bad row: line 2: missing field 'output'",
    "JSONL row that is not an object": "c.jsonl: 1 bad row: line 2: expected an object with 'input' and 'output', got "
                                       "list",
    "empty pool file": "d.jsonl: the pool file is empty",
    "pool file of blank lines": "e.jsonl: the pool file is empty",
    "Latin-1 pool file": "f.jsonl: not UTF-8 text (byte 0xe9 on line 1); save the file as UTF-8",
    "UTF-16 pool file": "g.jsonl: not UTF-8 text (byte 0xff on line 1); save the file as UTF-8",
    "CSV without the named column": "h.csv: the header has no column 'sentence' (columns: text, label)",
    "CSV with an empty output": "i.csv: 1 bad row: line 2: field 'output' is empty",
    "alpaca JSON that is not an array": "j.json: expected a JSON array of records, got dict",
    "unknown pool format": "k.xlsx: unknown pool format '.xlsx'; use one of: .jsonl, .ndjson, .csv, .tsv, .json",
    "missing pool file": "pool file '{dir}/nowhere.jsonl' does not exist",
    "oversized upload": "the file is 2,040 bytes; the limit is 2,000 bytes",
    "index name with path traversal": "invalid index name '../../etc': use 1-64 letters, digits, '-' or '_', starting "
                                      "with a letter or digit",
    "index name that is an absolute path": "invalid index name '/etc/passwd': use 1-64 letters, digits, '-' or '_', "
                                           "starting with a letter or digit",
    "index name through a symlink out of the data folder": "index 'escape' points outside the indexes folder "
                                                           "{dir}/indexes; refusing to read it",
    "k larger than the pool": "k=500 is larger than the pool (64 examples)",
    "negative k": "k must be a whole number >= 0, got -1",
    "negative demonstration seed": "the demonstrations' seed must be a whole number >= 0, got -1",
    "unknown selection": "unknown strategy 'telepathy'; choose one of: knn, random, mmr, fixed",
    "permutation that is not one": "permutation must reorder positions 0..2, each once; got [0, 0, 1]",
    "empty message": "the message is empty",
    "prompt beyond the context window": "the message is too long: the prompt needs 25016 tokens but only 1008 fit in "
                                        "the context window after room for the answer",
    "NaN temperature": "temperature must be between 0 and 2, got nan",
    "negative max_new_tokens": "max_new_tokens must be between 1 and 8192, got -5",
    "top_p above 1": "top_p must be in (0, 1], got 1.5",
    "unknown adapter": "unknown adapter 'pirate'; available: base",
    "unknown model id offline": "model 'no-such-org/no-such-model' is not in the local Hugging Face cache and the hub "
                                "cannot be reached; pass a local folder, a .gguf file, or 'default'",
    "model folder without weights": "model folder '{dir}/empty-model' holds neither config.json nor a .gguf file",
    "pool row beyond the length limit": "l.jsonl: 1 bad row: line 1: input and output are 20,004 characters; the limit "
                                        "is 20,000 per row",
    "index written over a folder that is not one": "'{dir}/thesis' already holds files and is not an index, so "
                                                   "writing there would delete them; choose a new folder (or empty "
                                                   "that one yourself)",
    "adapter written over a folder that is not one": "'{dir}/thesis' already holds files and is not an adapter, so "
                                                     "writing there would delete them; choose a new folder (or empty "
                                                     "that one yourself)",
    "output folder below a file": "cannot create '{dir}/notes.txt/adapter': '{dir}/notes.txt' is a file, not a folder",
    "adapter name that is a path": "adapter name '../../etc' is not a valid adapter name: use letters, digits, '-' and "
                                   "'_' (at most 64, starting with a letter or digit; no paths)",
    "adapter named like the base model": "adapter name 'base' is reserved: it means the base model without an adapter",
}


@pytest.fixture(scope="module")
def setting(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    library = PoolLibrary(root=folder / "indexes", embedder=HashEmbedder(), max_upload_bytes=2000)
    return folder, cases(folder, ChatService(Generator(tiny), library), library)


def test_the_catalogue_covers_every_case(setting):
    _, actions = setting
    assert set(actions) == set(CATALOGUE)
    assert len(CATALOGUE) >= 25


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_each_case_gives_its_message(setting, case):
    folder, actions = setting
    assert actions[case]() == CATALOGUE[case].format(dir=folder)
