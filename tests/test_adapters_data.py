"""Reading instruction data and encoding it: formats, placeholders, assistant-only labels, packing."""

from __future__ import annotations

import json

import pytest

from test_adapters_support import write_rows

EXPECTED = [{"role": "user", "content": "Name?"}, {"role": "assistant", "content": "I am Quokka."}]


@pytest.mark.parametrize("record", [
    {"input": "Name?", "output": "I am {{name}}."},
    {"instruction": "Name?", "input": "", "output": "I am {{name}}."},
    {"messages": [{"role": "user", "content": "Name?"}, {"role": "assistant", "content": "I am {{ name }}."}]},
    {"conversations": [{"from": "human", "value": "Name?"}, {"from": "gpt", "value": "I am {{name}}."}]},
])
def test_every_record_shape_becomes_the_same_conversation(tmp_path, record):
    from adapters.data import load_conversations

    path = write_rows(tmp_path / "data.jsonl", [record])
    assert load_conversations(path, {"name": "Quokka"}) == [EXPECTED]


def test_alpaca_json_list_with_input_and_system(tmp_path):
    from adapters.data import load_conversations

    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"instruction": "Translate", "input": "hola", "output": "hello", "system": "Be brief"}]))
    assert load_conversations(path) == [[
        {"role": "system", "content": "Be brief"}, {"role": "user", "content": "Translate\n\nhola"},
        {"role": "assistant", "content": "hello"},
    ]]


@pytest.mark.parametrize(("record", "message"), [
    ({"input": "x", "output": "{{name}}"}, r"placeholder \{\{name\}\} has no value; pass --fill name="),
    ({"text": "x"}, "record 1: unknown record shape with keys \\['text'\\]"),
    ({"messages": [{"role": "user", "content": "x"}]}, "needs at least one assistant message"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "unknown 'from': 'robot'"),
    # what users write: each named by its field, not a bare KeyError or a comparison error
    ([{"input": "a", "output": "b"}], r"record 1: expected an object .*got a list; a JSON list of records belongs "
                                      r"in a \.json file"),
    ({"instruction": "x", "response": "y"}, r"an alpaca record \(it has 'instruction'\) has no 'output' field "
                                            r"\(its fields: instruction, response\)"),
    ({"messages": [{"role": "user", "text": "x"}]}, "a message has no 'content' field"),
    ({"conversations": [{"from": "human", "text": "x"}]}, "a ShareGPT turn has no 'value' field"),
    ({"conversations": "hi"}, "'conversations' must be a list of turns, got text"),
    ({"input": "x", "output": ["a"]}, "record 1: 'output' must be text, got a list"),
    ({"input": None, "output": "y"}, "'input' must be text, got null"),
    ({"messages": ["hi"]}, "a message must be an object with 'role', got text"),
])
def test_bad_records_name_the_problem(tmp_path, record, message):
    from adapters.data import DataError, load_conversations

    with pytest.raises(DataError, match=message):
        load_conversations(write_rows(tmp_path / "data.jsonl", [record]))


def test_labels_cover_exactly_the_assistant_turns():
    from tiny import tiny_tokenizer

    from adapters.encode import IGNORE, encode_conversation

    tokenizer = tiny_tokenizer()
    messages = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "the fox"},
                {"role": "assistant", "content": "the dog"}, {"role": "user", "content": "again"},
                {"role": "assistant", "content": "Paris"}]
    example = encode_conversation(tokenizer, messages, max_length=512)
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert example.input_ids == list(full)
    trained = tokenizer.decode([token for token in example.labels if token != IGNORE])
    assert trained == "the dog<|im_end|>\nParis<|im_end|>\n"
    assert all(label in (IGNORE, token) for label, token in zip(example.labels, example.input_ids))


def test_cut_examples_without_answer_are_dropped_and_packing_fills_sequences():
    from tiny import tiny_tokenizer

    from adapters.encode import encode_all, pack

    tokenizer = tiny_tokenizer()
    conversations = [[{"role": "user", "content": "the fox " * n}, {"role": "assistant", "content": "dog"}] for n in (1, 2, 40)]
    examples = encode_all(tokenizer, conversations, max_length=40)
    assert len(examples) == 2  # the long prompt left no room for the answer
    both = len(examples[0].input_ids) + len(examples[1].input_ids)
    assert [len(p.input_ids) for p in pack(examples, max_length=both - 1)] == [len(e.input_ids) for e in examples]
    packed = pack(examples, max_length=both)
    assert len(packed) == 1 and packed[0].input_ids == examples[0].input_ids + examples[1].input_ids


def test_split_is_seeded_and_disjoint():
    from adapters.encode import split

    train, held = split(list(range(20)), 0.25, seed=3)
    assert (len(train), len(held)) == (15, 5) and sorted(train + held) == list(range(20))
    assert split(list(range(20)), 0.25, seed=3) == (train, held)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("rank", 0, "rank must be a whole number of at least 1"),
    ("learning_rate", 2.0, r"learning_rate must be in \(0, 1\)"),
    ("eval_fraction", 0.9, "eval_fraction must be between 0 and 0.5"),
    ("target_modules", "everything", "target_modules must be a list of module names or 'all-linear'"),
    ("precision", "fp8", "precision must be one of auto, bf16, fp32"),
    ("output", "/tmp/../bad name", "output folder name 'bad name' is not a valid adapter name"),
    ("max_steps", 0, "max_steps must be at least 1"),
    ("alpha", float("nan"), "alpha must be positive, got nan"),  # passed `alpha <= 0`, then NaN weights
    ("alpha", float("inf"), "alpha must be positive, got inf"),
    ("seed", -5, "seed must be a whole number from 0 to 4294967295, got -5"),  # numpy said so after the model loaded
])
def test_train_config_names_the_bad_field(field, value, message):
    from adapters.config import TrainConfig

    options = {"data": "d.jsonl", "output": "/tmp/good", field: value}
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


def test_every_training_option_is_documented_on_the_command_line():
    from dataclasses import fields

    from adapters.config import TrainConfig
    from adapters.train import build_parser
    from bot.docstrings import field_docs

    docs = field_docs(TrainConfig)
    assert docs.keys() == {f.name for f in fields(TrainConfig)}
    assert docs["rank"] == "LoRA rank r." and docs["precision"].startswith('"auto" (bf16 autocast')
    from test_cli import help_entries

    parser = build_parser()
    assert all(action.help for action in parser._actions)
    shown = help_entries(parser.format_help())
    assert shown["--gradient-checkpointing"] == docs["gradient_checkpointing"]
    assert shown["--batch-size"] == docs["batch_size"] + " (default: 4)"


def test_unreadable_files_name_the_file_and_the_line(tmp_path):
    from adapters.data import DataError, load_conversations

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"input": "a", "output": "b"}\n\n{"input": "c", "output": "d"}\n{"input": oops}\n')
    with pytest.raises(DataError, match=r"rows.jsonl: line 4 is not JSON"):
        load_conversations(rows)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"input": "caf\u00e9", "output": "x"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.jsonl is not UTF-8 text"):
        load_conversations(latin)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"input": "a", "output": "b"},\n {"input": }]')
    with pytest.raises(DataError, match=r"broken.json is not valid JSON: .* line 2"):
        load_conversations(broken)


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.json", "UPPER.JSON"])
def test_files_as_editors_save_them_are_read(tmp_path, name):
    """A UTF-8 byte-order mark (Windows editors) and an upper-case suffix, as pool files are read."""
    from adapters.data import load_conversations

    rows = [{"input": "Name?", "output": "I am Quokka."}]
    text = json.dumps(rows) if name.lower().endswith(".json") else json.dumps(rows[0]) + "\r\n"
    (tmp_path / name).write_bytes(("\ufeff" if name.startswith("bom") else "").encode() + text.encode())
    assert load_conversations(tmp_path / name) == [EXPECTED]


def test_numbers_read_as_text_as_in_a_pool_and_a_spread_out_list_is_named(tmp_path):
    from adapters.data import DataError, load_conversations
    from retrieval.pool import load_pool

    rows = write_rows(tmp_path / "numbers.jsonl", [{"input": 12, "output": 0.5}, {"input": "x", "output": 1}])
    pool = load_pool(rows)
    assert [[m["content"] for m in c] for c in load_conversations(rows)] == [[e.input, e.output] for e in pool.examples]
    spread = tmp_path / "spread.jsonl"
    spread.write_text(json.dumps([{"input": "a", "output": "b"}], indent=2))
    with pytest.raises(DataError, match=r"spread.jsonl holds a JSON list, written over several lines; name the file "
                                        r"\.json"):
        load_conversations(spread)


def test_a_pool_table_is_training_data_and_its_problems_are_named(tmp_path):
    """CSV/TSV read as pools are: quoted commas and numbers as text; a bad row or column is named."""
    from adapters.data import DataError, load_conversations

    table = tmp_path / "rows.csv"
    table.write_text('input,output,source\n"Hello, who are you?",I am Kelp.,me\nTwo plus two?,4,me\n')
    as_json = tmp_path / "rows.jsonl"
    as_json.write_text('{"input": "Hello, who are you?", "output": "I am Kelp."}\n{"input": "Two plus two?", "output": "4"}\n')
    assert load_conversations(table) == load_conversations(as_json)
    tabs = tmp_path / "rows.tsv"
    tabs.write_text("input\toutput\nHi\tHello.\n")
    assert load_conversations(tabs) == [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]]
    (tmp_path / "cols.csv").write_text("text,label\ngood,1\n")
    with pytest.raises(DataError, match=r"cols.csv: the header has no column 'input' \(columns: text, label\); a table "
                                         r"of training data needs the columns 'input' and 'output'"):
        load_conversations(tmp_path / "cols.csv")
    (tmp_path / "empty.csv").write_text("input,output\nfine,\n")
    with pytest.raises(DataError, match=r"empty.csv: line 2: field 'output' is empty"):
        load_conversations(tmp_path / "empty.csv")


def test_a_long_row_is_training_data_in_a_table_as_in_jsonl(tmp_path):
    """A row over a pool's 20,000-character limit is refused as a demonstration but is training data
    in any format (the trainer cuts it to --max-length tokens and says so)."""
    from adapters.data import load_conversations
    from retrieval.pool import PoolError, load_pool
    from retrieval.rows import MAX_RECORD_CHARS

    long = "word " * (MAX_RECORD_CHARS // 5 + 10)
    table, lines = tmp_path / "long.csv", tmp_path / "long.jsonl"
    table.write_text(f"input,output\nsummarise this,{long}\n")
    lines.write_text(json.dumps({"input": "summarise this", "output": long}) + "\n")
    assert load_conversations(table) == load_conversations(lines)
    assert load_conversations(table)[0][1]["content"] == long
    with pytest.raises(PoolError, match="limit is 20,000 per row"):
        load_pool(str(table))  # as a pool it is still refused


@pytest.mark.parametrize("content, message", [(None, "data file '.*none.jsonl' does not exist"),
                                              ("folder", "data file '.*none.jsonl' is a folder; give the file inside it"),
                                              ("", "data file '.*none.jsonl' holds no records")])
def test_bad_data_is_refused_before_the_model_loads(tmp_path, monkeypatch, content, message):
    import adapters.lora
    from adapters.config import TrainConfig
    from adapters.train import train

    monkeypatch.setattr(adapters.lora, "load_base", lambda *args, **kwargs: pytest.fail("loaded the model first"))
    data = tmp_path / "none.jsonl"
    if content == "folder":
        data.mkdir()
    elif content is not None:
        data.write_text(content)
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(data=str(data), output=str(tmp_path / "out"), max_steps=1))
    assert not (tmp_path / "out").exists()
