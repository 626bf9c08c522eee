"""Few-shot prompts: their messages, rendered text, token budget and the langchain selector."""

import pytest

from bot.conversation import PromptTooLong, count_prompt_tokens
from bot.fewshot import build_fewshot_prompt
from retrieval.pool import Example
from retrieval.select import Demo


def demo(i: int, score: float, text: str | None = None) -> Demo:
    return Demo(Example(id=i, input=text or f"review number {i}", output="positive"), score)


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return tiny.tokenizer


def test_chat_style_turns(tokenizer):
    demos = [demo(4, 0.2), demo(7, 0.9)]
    prompt = build_fewshot_prompt(tokenizer, "the query", demos, task="Classify.", system="Be brief.")
    assert prompt.messages == [
        {"role": "system", "content": "Be brief.\n\nClassify."},
        {"role": "user", "content": "review number 4"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "review number 7"},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "the query"},
    ]
    assert [d.id for d in prompt.demos] == [4, 7] and prompt.dropped == 0 and prompt.notice is None
    assert prompt.text == tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
    assert prompt.prompt_tokens == count_prompt_tokens(tokenizer, prompt.messages)
    assert prompt.demo_dicts()[1] == {"id": 7, "input": "review number 7", "output": "positive", "score": 0.9}


def test_text_style_block(tokenizer):
    prompt = build_fewshot_prompt(tokenizer, "q", [demo(1, 0.5)], task="Classify.", style="text")
    assert prompt.messages == [
        {"role": "user", "content": "Classify.\n\nInput: review number 1\nOutput: positive\n\nInput: q\nOutput:"}
    ]


def test_braces_in_demonstrations_are_kept_verbatim(tokenizer):
    tricky = demo(0, 0.5, text="format {name} as {{json}}")
    for style in ("chat", "text"):
        prompt = build_fewshot_prompt(tokenizer, "q {x}", [tricky], style=style)
        assert "format {name} as {{json}}" in prompt.text and "q {x}" in prompt.text


def test_zero_shot_has_no_demonstrations(tokenizer):
    prompt = build_fewshot_prompt(tokenizer, "the query", [], task="Classify.")
    assert prompt.messages == [{"role": "system", "content": "Classify."}, {"role": "user", "content": "the query"}]
    assert prompt.demos == [] and "review" not in prompt.text


def test_budget_drops_the_least_similar_first(tokenizer):
    demos = [demo(0, 0.5), demo(1, 0.1), demo(2, 0.9), demo(3, 0.3)]  # prompt order
    full = build_fewshot_prompt(tokenizer, "the query", demos)
    without_two = build_fewshot_prompt(tokenizer, "the query", [demos[0], demos[2]])
    assert without_two.prompt_tokens < full.prompt_tokens  # sanity check: the budget will bite
    fitted = build_fewshot_prompt(tokenizer, "the query", demos, budget=without_two.prompt_tokens)
    assert [d.id for d in fitted.demos] == [0, 2]  # 0.1 and 0.3 went; order kept
    assert fitted.dropped == 2 and fitted.notice == "2 least similar demonstrations were dropped to fit the context window."
    assert fitted.messages == without_two.messages


def test_budget_too_small_for_the_query(tokenizer):
    with pytest.raises(PromptTooLong, match="needs .* tokens without any demonstration, but only 3 fit"):
        build_fewshot_prompt(tokenizer, "the query", [demo(0, 0.5)], budget=3)


def test_bad_style(tokenizer):
    with pytest.raises(ValueError, match="unknown style 'xml'; choose one of: chat, text"):
        build_fewshot_prompt(tokenizer, "q", [], style="xml")


def test_langchain_selector_feeds_a_langchain_template():
    from langchain_core.prompts import ChatPromptTemplate, FewShotChatMessagePromptTemplate

    from retrieval.embedder import HashEmbedder
    from retrieval.example_selector import IndexExampleSelector
    from retrieval.index import DemoIndex
    from retrieval.pool import Pool

    texts = ["the film was great", "the food was cold", "a great film", "cold soup again"]
    pool = Pool([Example(id=i, input=t, output=f"o{i}") for i, t in enumerate(texts)], task=None, source="memory")
    selector = IndexExampleSelector(DemoIndex.build(pool, HashEmbedder()), k=2)
    picked = selector.select_examples({"input": "great film"})
    assert [p["id"] for p in picked] == [0, 2] and picked[0]["score"] <= picked[1]["score"]  # nearest last
    template = FewShotChatMessagePromptTemplate(
        example_selector=selector, input_variables=["input"],
        example_prompt=ChatPromptTemplate.from_messages([("human", "{input}"), ("ai", "{output}")]),
    )
    assert [m.content for m in template.format_messages(input="great film")] == [texts[0], "o0", texts[2], "o2"]
    assert selector.add_example({"input": "a great great film", "output": "o4"}) == 4


def test_fewshot_from_index_selects_orders_and_uses_the_pool_task(tokenizer):
    from bot.fewshot import fewshot_from_index
    from retrieval.embedder import HashEmbedder
    from retrieval.index import DemoIndex
    from retrieval.pool import Pool

    texts = ["the film was great", "the food was cold", "a great film", "cold soup again"]
    pool = Pool([Example(id=i, input=t, output=f"o{i}") for i, t in enumerate(texts)], task="Label.", source="m")
    prompt = fewshot_from_index(DemoIndex.build(pool, HashEmbedder()), tokenizer, "great film", k=2)
    assert prompt.messages[0] == {"role": "system", "content": "Label."}
    assert [d.id for d in prompt.demos] == [0, 2]  # nearest last
    assert prompt.messages[-2] == {"role": "assistant", "content": "o2"}
