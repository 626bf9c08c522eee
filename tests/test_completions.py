"""Raw completions with log-probabilities (`/v1/completions`), against one-row-at-a-time references."""

import openai
import pytest
import torch

from bot.completions import complete_tokens
from bot.generation import PEFT_BASE, Generator
from bot.service import ChatService
from bot.settings import GenerationSettings
from servers import serving
from tiny import tiny_loaded, with_lora_adapters

ROWS = [[5, 17, 33, 8, 91, 4], [12, 60], [7, 7, 7, 40, 41, 42, 43, 44, 45, 46]]
"""Prompts of different lengths, so the batch is padded."""
GREEDY = GenerationSettings(temperature=0.0)


@pytest.fixture(scope="module")
def generator():
    return Generator(with_lora_adapters(tiny_loaded(), ["pirate", "poet"]))


def reference_logprobs(generator, row, adapter):
    """Each token's log-probability from the row alone (no padding, no batch)."""
    name = PEFT_BASE if adapter == "base" else adapter
    with torch.inference_mode():
        logits = generator.loaded.model(input_ids=torch.tensor([row]), adapter_names=[name]).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return [logprobs[j - 1, row[j]].item() for j in range(1, len(row))]


def reference_greedy(generator, row, adapter, tokens):
    name = PEFT_BASE if adapter == "base" else adapter
    with torch.inference_mode():
        out = generator.loaded.model.generate(
            input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long),
            adapter_names=[name], max_new_tokens=tokens, do_sample=False, pad_token_id=0,
        )
    return out[0, len(row):].tolist()


@pytest.mark.parametrize("adapter", ["base", "pirate"])
def test_echo_scores_equal_each_row_scored_alone(generator, adapter):
    done = complete_tokens(generator, ROWS, 0, GREEDY, adapter, logprobs=3, echo=True)
    for row, item in zip(ROWS, done):
        expected = reference_logprobs(generator, row, adapter)
        assert item.new_ids == [] and item.scores.ids == row
        assert item.scores.logprobs[0] is None
        assert item.scores.logprobs[1:] == pytest.approx(expected, abs=1e-4)
        assert all(len(top) == 3 and max(top.values()) >= lp - 1e-6
                   for top, lp in zip(item.scores.top[1:], item.scores.logprobs[1:]))


def test_adapters_score_differently(generator):
    """Sanity check for the test above: an adapter's scores are not the base's."""
    base = reference_logprobs(generator, ROWS[0], "base")
    assert reference_logprobs(generator, ROWS[0], "pirate") != pytest.approx(base, abs=1e-3)


@pytest.mark.parametrize("adapter", ["base", "poet"])
def test_generated_tokens_equal_the_row_alone_and_are_scored(generator, adapter):
    done = complete_tokens(generator, ROWS, 5, GREEDY, adapter, logprobs=0, echo=False)
    for row, item in zip(ROWS, done):
        assert item.new_ids == reference_greedy(generator, row, adapter, 5)
        assert item.scores.ids == item.new_ids
        whole = reference_logprobs(generator, row + item.new_ids, adapter)
        assert item.scores.logprobs == pytest.approx(whole[-len(item.new_ids):], abs=1e-4)


def test_bad_arguments_are_refused(generator):
    with pytest.raises(ValueError, match="at least one token"):
        complete_tokens(generator, [[]], 1, GREEDY)
    with pytest.raises(ValueError, match="exceeds the model's context window"):
        complete_tokens(generator, [[5] * 1020], 8, GREEDY)
    with pytest.raises(ValueError, match="logprobs must be between 0 and 20"):
        complete_tokens(generator, ROWS, 1, GREEDY, logprobs=21)
    with pytest.raises(ValueError, match="unknown adapter 'nope'"):
        complete_tokens(generator, ROWS, 0, GREEDY, "nope", logprobs=0)


@pytest.fixture(scope="module")
def api(generator):
    import app

    with serving(app.create_server(ChatService(generator))) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def test_openai_client_gets_prompt_logprobs_the_vllm_way(api, generator):
    """echo=True, logprobs=1, max_tokens=1: the request lm-eval sends vLLM to score a prompt."""
    response = api.completions.create(model="pirate", prompt=ROWS, echo=True, logprobs=1, max_tokens=1)
    assert [c.index for c in response.choices] == [0, 1, 2]
    for row, choice in zip(ROWS, response.choices):
        scores = choice.logprobs.token_logprobs
        assert len(scores) == len(row) + 1 and scores[0] is None
        assert scores[1:len(row)] == pytest.approx(reference_logprobs(generator, row, "pirate"), abs=1e-4)
        assert choice.logprobs.text_offset[0] == 0
        assert choice.text == "".join(choice.logprobs.tokens)
    assert response.usage.prompt_tokens == sum(map(len, ROWS)) and response.usage.completion_tokens == 3


def test_text_prompt_without_echo_continues_the_text(api, generator):
    prompt = "the quick brown fox"
    ids = list(generator.tokenizer(prompt)["input_ids"])
    response = api.completions.create(model="tiny-llama", prompt=prompt, max_tokens=6, temperature=0)
    new = reference_greedy(generator, ids, "base", 6)
    assert response.choices[0].text == generator.tokenizer.decode(new, skip_special_tokens=True)
    assert response.choices[0].logprobs is None and response.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    "body, status, message",
    [({"model": "nope", "prompt": "hi"}, 404, "unknown model 'nope'"),
     ({"model": "poet", "prompt": "hi", "stream": True}, 400, "streaming is supported on /v1/chat/completions"),
     ({"model": "poet", "prompt": "hi", "logprobs": 50}, 400, "logprobs must be between 0 and 20"),
     ({"model": "poet", "prompt": [[1, 2], [10**9]]}, 400, "token ids must be between 0 and"),
     ({"model": "poet", "prompt": [5] * 1020, "max_tokens": 16}, 400, "exceeds the model's context window"),
     ({"model": "poet", "prompt": "hi", "max_tokens": -1}, 400, "max_tokens")],
)
def test_bad_requests_get_openai_style_errors(api, body, status, message):
    extra = {k: v for k, v in body.items() if k not in ("model", "prompt")}
    with pytest.raises(openai.APIStatusError) as caught:
        api.completions.create(model=body["model"], prompt=body["prompt"], extra_body=extra)
    assert caught.value.status_code == status
    assert message in caught.value.body["message"]


def test_stop_string_cuts_text_scores_and_usage(api):
    whole = api.completions.create(model="poet", prompt="the quick brown fox", max_tokens=12, temperature=0).choices[0]
    stop = whole.text.strip()[4:7]
    assert len(stop) == 3, "sanity check: the answer is long enough to hold a stop string"
    cut = api.completions.create(model="poet", prompt="the quick brown fox", max_tokens=12, temperature=0, stop=[stop],
                                 logprobs=0)
    choice = cut.choices[0]
    assert choice.text == whole.text[: whole.text.index(stop)] and choice.finish_reason == "stop"
    assert cut.usage.completion_tokens < 12
    assert len(choice.logprobs.token_logprobs) == cut.usage.completion_tokens


def test_stop_cut_keeps_the_fewest_tokens_that_reach_a_stop(generator):
    """Against a scan of every prefix, for stops that start at each character of the answer."""
    from bot.api import _cut_at_stop
    from bot.completions import TokenCompletion

    tokenizer = generator.loaded.tokenizer
    ids = tokenizer("the quick brown fox jumps over the lazy dog, twice: quick and lazy")["input_ids"]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    item = TokenCompletion(prompt_ids=[1, 2], new_ids=ids, finish_reason="length", scores=None)
    for start in range(len(text) - 2):
        stops = [text[start:start + 3]]
        expected = next(n for n in range(1, len(ids) + 1)
                        if stops[0] in tokenizer.decode(ids[:n], skip_special_tokens=True))
        cut = _cut_at_stop(tokenizer, item, stops)
        assert cut.new_ids == ids[:expected] and cut.finish_reason == "stop", stops
    assert _cut_at_stop(tokenizer, item, ["not in the text"]) is item


def test_token_batches_respect_the_budget():
    from bot.completions import _token_batches

    rows = [[1] * n for n in (3, 5, 2, 9, 1, 1)]
    batches = _token_batches(rows, 10)
    assert [row for batch in batches for row in batch] == rows
    assert all(len(batch) == 1 or len(batch) * max(map(len, batch)) <= 10 for batch in batches)
    assert _token_batches([[1] * 50], 10) == [[[1] * 50]]


def test_an_adapter_not_yet_loaded_is_attached_on_first_request(tmp_path):
    """/v1/models lists adapters of the adapters folder before they are loaded; a request loads one."""
    import app
    from adapters.host import AdapterHost
    from adapters.registry import AdapterRegistry
    from peft import PeftModel
    from test_adapters_support import PERSONA_ROWS, load_tiny, tiny_base, train_tiny, write_rows

    base = tiny_base(tmp_path / "base")
    train_tiny(base, write_rows(tmp_path / "rows.jsonl", PERSONA_ROWS), tmp_path / "adapters" / "zebra")
    generator = Generator(load_tiny(base))
    service = ChatService(generator, adapters=AdapterHost(generator.loaded, generator.lock,
                                                          AdapterRegistry(tmp_path / "adapters")))
    assert generator.resident_adapters() == []
    fresh = PeftModel.from_pretrained(load_tiny(base).model, str(tmp_path / "adapters" / "zebra")).eval()
    row = ROWS[0]
    with torch.inference_mode():
        logprobs = torch.log_softmax(fresh(input_ids=torch.tensor([row])).logits[0].float(), dim=-1)
    expected = [logprobs[j - 1, row[j]].item() for j in range(1, len(row))]
    with serving(app.create_server(service)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        response = client.completions.create(model="zebra", prompt=[row], echo=True, logprobs=0, max_tokens=0)
    assert response.choices[0].logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    assert response.choices[0].finish_reason == "length"


def test_top_logprobs_hold_the_chosen_token_as_openai_gives_them(api, generator):
    """Up to logprobs + 1 entries: the chosen token is always there, also with logprobs 0 (which gave {})."""
    from bot.token_text import shown

    row = ROWS[0]
    reference = reference_logprobs(generator, row, "base")
    for top in (0, 2):
        choice = api.completions.create(model="tiny-llama", prompt=row, echo=True, logprobs=top, max_tokens=0).choices[0]
        assert choice.logprobs.top_logprobs[0] is None
        for j, alternatives in enumerate(choice.logprobs.top_logprobs[1:], start=1):
            assert alternatives[shown(generator.tokenizer, row[j])] == pytest.approx(reference[j - 1], abs=1e-4)
            assert top <= len(alternatives) <= top + 1


def test_offsets_index_the_text_where_a_token_holds_part_of_a_character(api, generator):
    """An emoji is four one-byte tokens here and é two: each used to count as one character '�',
    shifting every later offset. Now they show as `bytes:` and point at the character they make."""
    prompt = "🙂é the 你好"
    tokenizer = generator.tokenizer
    ids = list(tokenizer(prompt)["input_ids"])
    assert len(ids) > len(prompt) - 4, "sanity check: characters are split over several tokens"
    choice = api.completions.create(model="tiny-llama", prompt=prompt, echo=True, logprobs=1, max_tokens=0).choices[0]
    tokens, offsets = choice.logprobs.tokens, choice.logprobs.text_offset
    assert choice.text == prompt and len(tokens) == len(ids)
    for token, offset, token_id in zip(tokens, offsets, ids):
        if token.startswith("bytes:"):
            raw = bytes(int(h, 16) for h in token.removeprefix("bytes:").split("\\x")[1:])
            assert raw in prompt[offset].encode()  # a part of the character at its offset
        else:
            assert prompt[offset:].startswith(token) and token == tokenizer.decode([token_id])
    assert offsets == sorted(offsets) and offsets[tokens.index(" the")] == prompt.index(" the")
    assert offsets[-1] == prompt.index("你好")
    # without echo the offsets continue from the prompt's end
    more = api.completions.create(model="tiny-llama", prompt=prompt, logprobs=0, max_tokens=3).choices[0]
    assert more.logprobs.text_offset[0] == len(prompt)


def test_the_byte_level_alphabet_is_the_tokenizers_own():
    from tokenizers import pre_tokenizers

    from bot.token_text import byte_level_alphabet

    alphabet = byte_level_alphabet()
    assert set(alphabet) == set(pre_tokenizers.ByteLevel.alphabet()) and sorted(alphabet.values()) == list(range(256))


def sentencepiece_like():
    """Words with SentencePiece's leading-space marker and byte-fallback pieces: its decoder drops
    the space before a text's first word, so a token decoded alone loses it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "▁hello": 1, "▁world": 2, "<0xE4>": 3, "<0xBD>": 4, "<0xA0>": 5, "a": 6}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=core)


def test_spans_of_a_sentencepiece_text_keep_its_spaces_and_index_it():
    from bot.token_text import token_spans

    tokenizer = sentencepiece_like()
    ids = [1, 2, 2, 3, 4, 5, 6]
    assert tokenizer.decode(ids) == "hello world world你a"
    assert token_spans(tokenizer, ids) == [("hello", 0), (" world", 5), (" world", 11), ("bytes:\\xe4", 17),
                                           ("bytes:\\xbd", 17), ("bytes:\\xa0", 17), ("a", 18)]
    # without echo: the prompt's last tokens are the context, so the first new word keeps its space
    assert token_spans(tokenizer, [2, 6], start=5, context=[1]) == [(" world", 5), ("a", 11)]


def test_byte_level_offsets_equal_a_brute_force_recount():
    """Random runs of byte tokens, words and bytes that never make UTF-8 (a sampled answer can hold
    them): each offset is the length of the text that the tokens before it finish, counted from
    their bytes, where a replacement character '�' that is in the text counts like any other."""
    import codecs
    import random

    from bot.token_text import token_bytes, token_spans

    tokenizer = tiny_loaded().tokenizer
    pieces = [list(tokenizer(text, add_special_tokens=False)["input_ids"])
              for text in ["🙂", "é", " the", "你好", "a", "\ufffd"]]
    lone = [tokenizer.convert_tokens_to_ids(char) for char in ("ð", "Ł", "Ã")]  # 0xf0, 0x9f, 0xc3 alone
    rng = random.Random(0)
    for _ in range(200):
        ids = [token for _ in range(rng.randint(1, 8))
               for token in (rng.choice(pieces) if rng.random() < 0.8 else [rng.choice(lone)])]
        expected = []
        for i in range(len(ids)):
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            expected.append(len(decoder.decode(b"".join(token_bytes(tokenizer, t) for t in ids[:i]), final=False)))
        assert [offset for _, offset in token_spans(tokenizer, ids)] == expected, ids
