"""The chat service: few-shot turns against building the prompt by hand, and compare against one-by-one."""

import json

import pytest

from bot.conversation import build_messages
from bot.fewshot import build_fewshot_prompt
from bot.generation import Generator
from bot.service import ChatService, FewShot
from bot.settings import GenerationSettings
from retrieval.embedder import HashEmbedder
from retrieval.library import PoolLibrary
from retrieval.order import order_demos
from retrieval.select import select_demos

SETTINGS = GenerationSettings(max_new_tokens=6)


@pytest.fixture(scope="module")
def service(tiny, tmp_path_factory):
    library = PoolLibrary(root=tmp_path_factory.mktemp("indexes"), embedder=HashEmbedder())
    return ChatService(Generator(tiny), library)


def last(turns):
    result = None
    for result in turns:
        pass
    return result


def test_plain_chat_sends_history_and_system(service):
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    result = last(service.chat("and now?", history, "sys", SETTINGS))
    expected = service.generator.complete(build_messages("and now?", history, "sys"), SETTINGS)
    assert result.text == expected.text and result.demos == [] and result.done
    assert result.prompt == service.generator.render(build_messages("and now?", history, "sys"))


def test_fewshot_turn_uses_the_selected_and_ordered_demonstrations(service, tiny):
    query = "a wonderful, moving film"
    result = last(service.chat(query, None, None, SETTINGS, fewshot=FewShot(pool="sentiment", k=4)))
    index = service.library.get("sentiment")
    demos = order_demos(select_demos(index, query, 4, "knn"), "nearest-last")
    expected = build_fewshot_prompt(tiny.tokenizer, query, demos, task=index.pool.task)
    assert [d["id"] for d in result.demos] == [d.id for d in demos]
    scores = [d["score"] for d in result.demos]
    assert scores == sorted(scores), "nearest-last puts the most similar demonstration next to the query"
    assert result.prompt == expected.text
    assert result.text == service.generator.complete(expected.messages, SETTINGS).text


@pytest.mark.parametrize("mode, shots", [("zero", 0), ("one", 1), ("few", 3)])
def test_mode_sets_the_number_of_demonstrations(service, mode, shots):
    result = last(service.chat("terrible acting", None, None, SETTINGS, fewshot=FewShot("sentiment", mode=mode, k=3)))
    assert len(result.demos) == shots
    assert result.prompt.count("<|im_start|>assistant") == shots + 1
    task = service.library.get("sentiment").pool.task
    assert task in result.prompt, "even zero-shot prompts carry the task description"


def test_fewshot_ignores_history_and_says_so(service):
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}]
    result = last(service.chat("so boring", history, None, SETTINGS, fewshot=FewShot("sentiment", k=2)))
    assert "earlier" not in result.prompt
    assert "earlier turns are not sent" in result.notice


def test_pool_file_by_path(service, tmp_path):
    pool = tmp_path / "colours.jsonl"
    pool.write_text("\n".join(json.dumps({"input": f"thing {i}", "output": c}) for i, c in enumerate("rgbrgb")))
    result = last(service.chat("thing 9", None, None, SETTINGS, fewshot=FewShot(str(pool), k=2)))
    assert len(result.demos) == 2 and all(d["input"].startswith("thing") for d in result.demos)


def test_a_pool_file_with_other_columns_says_how_to_use_it(service, tmp_path):
    table = tmp_path / "news.csv"
    table.write_text("text,label\nmarkets rise,business\n")
    with pytest.raises(ValueError, match=r"news.csv: the header has no column 'input' \(columns: text, label\); for "
                                         "other columns, build an index with python -m retrieval build --pool FILE "
                                         "--input-field COLUMN --out DIR, and pass the folder"):
        last(service.chat("hi", None, None, SETTINGS, fewshot=FewShot(str(table), k=1)))


@pytest.mark.parametrize(
    "fewshot, message",
    [
        (FewShot("nowhere", k=2), "unknown pool 'nowhere'; available: .*sentiment"),
        (FewShot("data/nowhere.jsonl", k=2), "pool file 'data/nowhere.jsonl' does not exist"),
        (FewShot("sentiment", k=10_000), "k=10000 is larger than the pool"),
        (FewShot("sentiment", select="psychic"), "unknown strategy 'psychic'"),
        (FewShot("sentiment", order="alphabetical"), "unknown order 'alphabetical'"),
    ],
)
def test_bad_fewshot_requests_name_the_problem(service, fewshot, message):
    with pytest.raises(ValueError, match=message):
        last(service.chat("hello", None, None, SETTINGS, fewshot=fewshot))


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mode 'many'; choose one of: zero, one, few"):
        FewShot("sentiment", mode="many")


def test_compare_equals_one_by_one(service):
    fewshot = FewShot("sentiment", k=2)
    results = service.compare("what a great cast", ["base", "base"], settings=SETTINGS, fewshot=fewshot)
    alone = last(service.chat("what a great cast", None, None, SETTINGS, fewshot=fewshot))
    assert [r.text for r in results] == [alone.text, alone.text]
    assert results[0].demos == alone.demos and results[0].prompt == alone.prompt


def test_unknown_adapter_is_refused(service):
    with pytest.raises(ValueError, match="unknown adapter 'pirate'; available: base"):
        last(service.chat("hello", None, None, SETTINGS, adapter="pirate"))
