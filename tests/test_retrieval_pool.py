"""Pool files: the formats that load, the messages for those that do not, and the built-in pools."""

import json
import tracemalloc

import pytest

import retrieval.rows
from retrieval.pool import BadRowsError, Example, Pool, PoolError, builtin_pools, content_sha256, load_pool
from retrieval.rows import MAX_RECORD_CHARS


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_jsonl_keeps_extra_fields_and_numbers_rows(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"input": "good film", "output": "positive", "source": "me"},
        {"input": "bad film", "output": "negative"},
    ])
    pool = load_pool(path)
    assert [(e.id, e.input, e.output) for e in pool.examples] == [(0, "good film", "positive"), (1, "bad film", "negative")]
    assert pool.examples[0].extra == {"source": "me"}
    assert pool.task is None and pool.source == str(path)


def test_sidecar_gives_the_task(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"input": "a", "output": "b"}])
    (tmp_path / "p.json").write_text(json.dumps({"task": "Do the thing."}), encoding="utf-8")
    assert load_pool(path).task == "Do the thing."
    assert load_pool(path, task="Override.").task == "Override."


def test_exact_duplicates_are_dropped(tmp_path):
    rows = [{"input": "a", "output": "x"}, {"input": "a", "output": "x"}, {"input": "a", "output": "y"}]
    pool = load_pool(write_jsonl(tmp_path / "p.jsonl", rows))
    assert [(e.input, e.output) for e in pool.examples] == [("a", "x"), ("a", "y")]
    assert pool.duplicates == 1


def test_notes_count_what_was_left_out(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"input": "a", "output": "x"}] * 3 + [{"input": "b", "output": "y"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "not json\n", encoding="utf-8")
    assert load_pool(path, skip_bad=True).notes() == ["1 bad row skipped", "2 duplicates dropped"]
    assert load_pool(write_jsonl(tmp_path / "clean.jsonl", rows[2:])).notes() == []


@pytest.mark.parametrize("name, text", [
    ("ids.jsonl", "".join(json.dumps({"input": f"film {i}", "output": i % 3 - 1}) + "\n" for i in range(7))),
    ("ids.csv", "input,output\n" + "".join(f"film {i},{i % 3 - 1}\n" for i in range(7))),
])
def test_outputs_that_look_like_class_ids_get_a_note(tmp_path, name, text):
    """JSON numbers and CSV cells are read alike, as text; the note lists the ids in numeric order."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    pool = load_pool(path)
    assert [e.output for e in pool.examples[:3]] == ["-1", "0", "1"]
    assert pool.notes() == ["every output is a number (-1, 0, 1), so the bot will answer with these numbers; "
                            "write label words in the pool to have it answer in words"]


@pytest.mark.parametrize("outputs", [
    ["0", "1", "positive", "0"],  # not every output is a number
    ["12", "7.5", "3", "40"],  # numbers that never repeat: answers, not classes
    [str(i % 21) for i in range(42)],  # 21 distinct values: more than MAX_CLASS_IDS
])
def test_no_class_id_note_for_words_answers_or_many_values(tmp_path, outputs):
    rows = [{"input": f"q{i}", "output": out} for i, out in enumerate(outputs)]
    assert load_pool(write_jsonl(tmp_path / "p.jsonl", rows)).notes() == []


def test_many_class_ids_are_shortened(tmp_path):
    rows = [{"input": f"q{i}", "output": i % 20} for i in range(40)]
    note, = load_pool(write_jsonl(tmp_path / "p.jsonl", rows)).notes()
    assert note.startswith("every output is a number (0, 1, 2, 3, 4, 5, ...), so")


def test_malformed_json_line_names_its_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": \n', encoding="utf-8")
    with pytest.raises(PoolError, match=r"p.jsonl: 1 bad row: line 2: not valid JSON"):
        load_pool(path)


def test_missing_field_is_named(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"input": "a", "output": "b"}, {"input": "c"}])
    with pytest.raises(PoolError, match="line 2: missing field 'output'"):
        load_pool(path)


def test_many_errors_show_the_first_few(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": str(i)} for i in range(9)])
    with pytest.raises(PoolError, match=r"9 bad rows \(first 5 shown\): line 1: .*line 5: missing field 'input'$"):
        load_pool(path)


def test_skip_bad_reports_how_many(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"input": "a", "output": "b"}\nnot json\n{"input": ""}\n', encoding="utf-8")
    pool = load_pool(path, skip_bad=True)
    assert len(pool) == 1 and pool.skipped == 2


def test_empty_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(PoolError, match="the pool file is empty"):
        load_pool(path)


def test_wrong_encoding_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes('{"input": "a", "output": "b"}\n'.encode() + '{"input": "café", "output": "b"}\n'.encode("latin-1"))
    with pytest.raises(PoolError, match=r"not UTF-8 text \(byte 0xe9 on line 2\)"):
        load_pool(path)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(PoolError, match="unknown pool format '.txt'"):
        load_pool(path)


def test_csv_with_chosen_fields(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('text,label,note\n"good, really",pos,x\nbad,neg,y\n', encoding="utf-8")
    pool = load_pool(path, input_field="text", output_field="label")
    assert [(e.input, e.output, e.extra) for e in pool.examples] == [
        ("good, really", "pos", {"note": "x"}), ("bad", "neg", {"note": "y"}),
    ]


def test_csv_without_the_field(tmp_path, capsys):
    from retrieval.cli import build_parser, main

    path = tmp_path / "p.csv"
    path.write_text("text,label\na,b\n", encoding="utf-8")
    with pytest.raises(PoolError, match=r"no column 'input' \(columns: text, label\)$"):  # no flag the caller lacks
        load_pool(path)
    args = ["build", "--pool", str(path), "--out", str(tmp_path / "idx"), "--embedder", "hash", "--input-field", "text"]
    assert main(build_parser().parse_args(args)) == 2
    assert capsys.readouterr().err.strip().endswith("no column 'output' (columns: text, label); choose one with "
                                                    "--output-field")


def test_tsv_short_row_names_its_line(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("input\toutput\na\tb\nc\n", encoding="utf-8")
    with pytest.raises(PoolError, match="line 3: fewer cells than header columns"):
        load_pool(path)


def test_alpaca_json(tmp_path):
    path = tmp_path / "p.json"
    records = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
        {"instruction": "No answer."},
    ]
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    with pytest.raises(PoolError, match="line 12: missing field 'output'"):
        load_pool(path)
    pool = load_pool(path, skip_bad=True)
    assert [(e.input, e.output) for e in pool.examples] == [("Add the numbers.\n\n2 and 3", "5"), ("Say hi.", "hi")]


def test_chinese_pool_round_trips(tmp_path):
    rows = [{"input": "这部电影很好看。", "output": "正面"}, {"input": "服务太差了。", "output": "负面"}]
    path = write_jsonl(tmp_path / "zh.jsonl", rows)
    (tmp_path / "zh.json").write_text(json.dumps({"task": "判断情感。"}, ensure_ascii=False), encoding="utf-8")
    pool = load_pool(path)
    assert [(e.input, e.output) for e in pool.examples] == [(r["input"], r["output"]) for r in rows]
    assert pool.task == "判断情感。"


def test_hash_depends_on_content_not_format(tmp_path):
    jsonl = write_jsonl(tmp_path / "p.jsonl", [{"input": "a", "output": "b"}])
    csv = tmp_path / "p.csv"
    csv.write_text("input,output\na,b\n", encoding="utf-8")
    assert load_pool(jsonl).sha256 == load_pool(csv).sha256
    other = write_jsonl(tmp_path / "q.jsonl", [{"input": "a", "output": "c"}])
    assert load_pool(other).sha256 != load_pool(jsonl).sha256


def test_dataclasses_validate_fields():
    with pytest.raises(ValueError, match="Example.input must be non-empty text"):
        Example(id=0, input="  ", output="x")
    with pytest.raises(ValueError, match="example at position 0 has id 3"):
        Pool(examples=[Example(id=3, input="a", output="b")], task=None, source="memory")
    examples = [Example(id=0, input="a", output="b")]
    assert Pool(examples=examples, task=None, source="memory").sha256 == content_sha256(examples)


def test_builtin_pools_are_big_enough_and_have_tasks():
    pools = builtin_pools()
    assert {"sentiment", "intent", "dates", "sentiment_zh"} <= set(pools)
    for name, path in pools.items():
        pool = load_pool(path)
        assert len(pool) >= 60, name
        assert pool.task and pool.duplicates == 0, name


def test_bad_rows_message_names_no_flag(tmp_path):
    """`bot ask --pool` and `lab` have no --skip-bad; only the callers that can skip add a hint."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"input": "a", "output": "b"}, {"input": "c"}])
    with pytest.raises(BadRowsError) as caught:
        load_pool(path)
    assert str(caught.value) == "p.jsonl: 1 bad row: line 2: missing field 'output'"


def write_pool(path, long_input: str):
    """A pool of one short row, one with `long_input`, one short row, in the format of `path`'s suffix."""
    rows = [{"input": "short", "output": "a"}, {"input": long_input, "output": "b"}, {"input": "also short", "output": "c"}]
    if path.suffix == ".csv":
        path.write_text("input,output\n" + "".join(f"{r['input']},{r['output']}\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n", encoding="utf-8")
    else:
        write_jsonl(path, rows)
    return path


@pytest.mark.parametrize("name, line", [("p.jsonl", 2), ("p.csv", 3), ("p.json", 3)])
def test_overlong_row_is_a_bad_row_naming_its_line_and_the_limit(tmp_path, name, line):
    at_limit = write_pool(tmp_path / name, "x" * (MAX_RECORD_CHARS - 1))  # plus the 1-character output
    assert len(load_pool(at_limit)) == 3
    path = write_pool(tmp_path / name, "x" * MAX_RECORD_CHARS)
    with pytest.raises(BadRowsError, match=rf": line {line}: input and output are 20,001 characters; the limit is 20,000 per row$"):
        load_pool(path)
    pool = load_pool(path, skip_bad=True)
    assert [e.input for e in pool.examples] == ["short", "also short"] and pool.skipped == 1


def test_huge_jsonl_line_is_skipped_unread(tmp_path):
    """A 12 MB line must not be held in memory, let alone parsed (a 200 MB one once took 24 GB)."""
    path = write_pool(tmp_path / "p.jsonl", "word " * 2_400_000)
    tracemalloc.start()
    try:
        with pytest.raises(BadRowsError, match=r"p.jsonl: 1 bad row: line 2: over 262,144 bytes, the limit for one row$"):
            load_pool(path)
        pool = load_pool(path, skip_bad=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [e.input for e in pool.examples] == ["short", "also short"] and pool.skipped == 1
    assert peak < 5_000_000, f"reading the pool took {peak:,} bytes"


def test_pool_file_over_the_size_limit_is_refused_unread(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "p.jsonl", [{"input": "a", "output": "b"}] * 10)
    monkeypatch.setattr(retrieval.rows, "MAX_POOL_BYTES", 100)
    with pytest.raises(PoolError, match=r"p.jsonl: the file is 300 bytes; the limit for a pool is 100 bytes"):
        load_pool(path)


@pytest.mark.parametrize("suffix, line", [(".csv", 3), (".jsonl", 2)])
def test_a_cell_beyond_the_csv_modules_limit_is_one_bad_row_as_in_jsonl(tmp_path, suffix, line):
    """csv refuses cells over 131,072 characters by default, with its own error; the pool's row limit names it."""
    path = write_pool(tmp_path / f"p{suffix}", "x" * 200_000)
    with pytest.raises(PoolError, match=rf"p{suffix}: 1 bad row: line {line}: input and output are 200,001 characters"):
        load_pool(path)
    assert [e.input for e in load_pool(path, skip_bad=True).examples] == ["short", "also short"]


def test_jsonl_with_bom_crlf_and_unicode_line_separators(tmp_path):
    """Lines end only at '\\n': U+2028 inside a JSON string is text, not a line break."""
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + '{"input": "a\u2028b", "output": "x"}\r\n\r\n{"input": "c", "output": "y"}'.encode())
    pool = load_pool(path)
    assert [(e.input, e.output) for e in pool.examples] == [("a\u2028b", "x"), ("c", "y")]
