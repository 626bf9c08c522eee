"""The chat page in a real headless browser."""

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from bot.generation import Generator
from bot.service import ChatService
from browser import CHROMIUM, browser, send_chat, watch_reply
from servers import gradio_client, launched, running_app
from tiny import tiny_loaded

expect.set_options(timeout=15_000)  # each check waits until it holds: a queued round trip on a busy machine

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is installed by `make test` (make browser)"),
]


@pytest.fixture(scope="module")
def tiny_url(tiny):
    with launched(ChatService(Generator(tiny))) as url:
        yield url


@pytest.mark.parametrize("locale, title, tab", [("en-US", "In-context learning", "Chat"), ("zh-CN", "上下文学习", "对话")])
def test_interface_language_follows_the_browser(tiny_url, locale, title, tab):
    from ui.text import EN, ZH

    text = ZH if locale.startswith("zh") else EN
    with browser() as chromium:
        page = chromium.new_page(locale=locale)
        page.goto(tiny_url)
        # expect() waits until it holds: the title can be drawn before the tabs (CI failed once on `count()`).
        expect(page.locator("#title")).to_contain_text(title)
        expect(page.get_by_role("tab", name=tab)).to_have_count(1)
        expect(page.locator("#model-name textarea, #model-name input").first).to_have_value(re.compile("tiny-llama"))
        expect(page.locator("#chat-input")).to_contain_text(text["message"])  # the box's label, for screen readers
        # "no pool" is a choice shown in the page's language, also once the page's load has replaced the choices
        pool = page.get_by_label(text["pool"], exact=True)
        expect(pool).to_have_value(text["no_pool"])
        pool.click()
        expect(page.get_by_role("option", name=text["no_pool"], exact=True)).to_have_count(1)
        # so are the few-shot choices' names; their values (the API's) stay the same
        expect(page.get_by_label(text["selection"], exact=True)).to_have_value(text["choice_knn"])
        expect(page.get_by_label(text["choice_few"], exact=True)).to_be_checked()


def test_html_in_messages_is_shown_as_text_and_never_runs(tiny_url):
    typed = '<b>bold</b> <script>alert(1)</script><img src=x onerror="alert(2)"> and `<i>code</i>`'
    with browser() as chromium:
        page = chromium.new_page()
        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(tiny_url)
        send_chat(page, typed)
        watch_reply(page, timeout=60)
        shown = page.locator("[data-testid='user']").last
        assert shown.inner_text().strip() == typed.replace("`", "")
        assert shown.locator("b, script, img").count() == 0
    assert dialogs == []


def test_a_markdown_image_in_a_message_loads_nothing(tiny_url):
    """A reply (or a prompt injected into one) could send data to any server in an image's URL."""
    with browser() as chromium:
        page = chromium.new_page()
        fetched = []
        page.on("request", lambda request: fetched.append(request.url) if "9/leak.png" in request.url else None)
        page.goto(tiny_url)
        send_chat(page, "look ![pic](http://127.0.0.1:9/leak.png) here")
        watch_reply(page, timeout=60)
        shown = page.locator("[data-testid='user']").last
        assert shown.locator("img").count() == 0 and shown.get_by_role("link", name="pic").count() == 1
        assert "!" in shown.inner_text() and fetched == []


def test_a_refused_message_leaves_the_chat_usable(tiny_url):
    with browser() as chromium:
        page = chromium.new_page()
        page.goto(tiny_url)
        box = page.locator("#chat-input textarea")
        box.wait_for()
        expect(page.locator("#chat-input button").first).to_be_visible()  # a send button beside the box
        send_chat(page, "   ")
        expect(page.get_by_text("the message is empty").first).to_be_visible()
        expect(page.locator("[data-testid='user']")).to_have_count(0)  # refused before it entered the chat
        expect(box).to_be_enabled()
        send_chat(page, "word " * 3000)
        failed = watch_reply(page, timeout=60)[-1]
        assert failed.startswith("⚠️") and "the message is too long" in failed
        page.wait_for_function("!document.querySelector('#chat-input textarea').disabled", timeout=10000)
        send_chat(page, "hello")
        page.wait_for_function("document.querySelectorAll(\"[data-testid='bot']\").length === 2", timeout=60000)
        assert not watch_reply(page, timeout=60)[-1].startswith("⚠️")


@pytest.mark.integration
def test_typed_message_gets_a_streamed_reply():
    # At generate's pace: the native decoder (the default) can finish a reply between two polls.
    # Its streaming is checked in tests/test_fast_generation.py.
    with running_app("--no-fast-decode") as url, browser() as chromium:
        page = chromium.new_page()
        page.goto(url)
        send_chat(page, "Write three sentences about the sea.")
        states = watch_reply(page)
    assert len(states) >= 3, f"expected the reply to grow while streaming, saw {states}"
    # Markdown re-renders ("1." becomes a list item), so most, not all, updates extend the last one.
    extensions = sum(later.startswith(earlier) for earlier, later in zip(states, states[1:]))
    assert extensions >= len(states) // 2
    assert len(states[-1].split()) > 10


@pytest.fixture(scope="module")
def adapters_url():
    from tiny import tiny_loaded, with_lora_adapters

    service = ChatService(Generator(with_lora_adapters(tiny_loaded(), ["pirate", "poet"])))
    with launched(service) as url:
        yield service, url


def test_compare_tab_shows_each_adapter_side_by_side(adapters_url):
    from bot.conversation import build_messages
    from bot.settings import GenerationSettings

    from ui.chat import DEFAULT_SYSTEM

    service, url = adapters_url
    prompt = "the quick brown fox"
    messages = build_messages(prompt, system=DEFAULT_SYSTEM)  # the Chat tab's system prompt, as Compare sends it
    expected = {name: service.generator.complete(messages, GenerationSettings(max_new_tokens=12), name).text
                for name in ["base", "pirate", "poet"]}
    assert len(set(expected.values())) == 3, "sanity check: base and adapters answer differently"
    with browser() as chromium:
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-input textarea").fill(prompt)
        for name in ["pirate", "poet"]:
            page.locator("#compare-models").get_by_label(name).check()
        page.locator("#compare-models input[type=checkbox]").first.wait_for()
        slider = page.get_by_label("Max new tokens").last
        slider.fill("12")
        slider.press("Enter")
        page.locator("#compare-run").click()
        page.wait_for_function("document.querySelector('#compare-answer-2 textarea')?.value.length > 0", timeout=60_000)
        shown = {page.locator(f"#compare-answer-{i} label").first.inner_text().strip():
                 page.locator(f"#compare-answer-{i} textarea").input_value() for i in range(3)}
    assert shown == expected


@pytest.fixture
def held_compare(tiny):
    """A service whose model is held at its third forward pass of a comparison until that run's
    cancel event is set; yields (service, the cancel events, the answers returned, the passes made,
    the full unstopped greedy answer)."""
    import threading

    from bot.settings import GenerationSettings
    from ui.chat import DEFAULT_SYSTEM

    service = ChatService(Generator(tiny))
    full = service.compare("a fine film", ["base"], system=DEFAULT_SYSTEM,
                           settings=GenerationSettings(max_new_tokens=128))[0].text
    cancels, answers, calls, release = [], [], [], threading.Event()
    compare = service.compare

    def recorded(*args, **kwargs):
        cancels.append(kwargs["cancel"])
        results = compare(*args, **kwargs)
        answers.append(results[0].text)
        return results

    def hold(module, args):
        calls.append(1)
        if len(calls) == 3:  # held at the third pass until the stop reached the server
            while not (cancels[0].is_set() or release.is_set()):
                release.wait(0.05)

    service.compare = recorded
    handle = tiny.model.register_forward_pre_hook(hold)
    try:
        yield service, cancels, answers, calls, full
    finally:
        handle.remove()
        release.set()  # a failed test must not leave a server thread held in the shared model


def start_held_compare(page, url, calls):
    page.goto(url)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-input textarea").fill("a fine film")
    page.locator("#compare-run").click()
    for _ in range(1200):  # until the model is held at its third pass: the answer then has 3 tokens
        if len(calls) >= 3:
            return
        page.wait_for_timeout(50)
    raise AssertionError("the comparison never reached the model")


def test_compare_tabs_stop_button_shows_the_answer_so_far(held_compare):
    """Stop sets the run's cancel event while the model is held; the page then shows a start of the
    answer the unstopped greedy run gives, far shorter than it."""
    service, cancels, _, calls, full = held_compare
    with launched(service) as url, browser() as chromium:
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        start_held_compare(page, url, calls)
        page.locator("#compare-stop").click()
        page.wait_for_function("document.querySelector('#compare-answer-0 textarea')?.value.length > 0",
                               timeout=60_000)
        shown = page.locator("#compare-answer-0 textarea").input_value()
    assert cancels[0].is_set() and full.startswith(shown) and 0 < len(shown) < len(full) / 4


def test_closing_the_page_stops_its_comparison(held_compare):
    """A closed page's comparison ends at its next token, as Stop would end it, instead of holding
    the model for the rest of its answer; a run in another page goes on."""
    import time

    service, cancels, answers, calls, full = held_compare
    with launched(service) as url, browser() as chromium:
        other = chromium.new_page()
        other.goto(url)  # an open page of another session, with no run: closing the first must not break it
        page = chromium.new_page()
        start_held_compare(page, url, calls)
        page.close()
        deadline = time.monotonic() + 60
        while not answers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert answers, "the closed page's comparison still runs"
        other.get_by_role("tab", name="Compare").click()  # the other page still compares, to the end
        other.locator("#compare-input textarea").fill("a fine film")
        other.locator("#compare-run").click()
        other.wait_for_function("document.querySelector('#compare-answer-0 textarea')?.value.length > 0",
                                timeout=60_000)
        assert other.locator("#compare-answer-0 textarea").input_value() == full
    assert cancels[0].is_set() and not cancels[1].is_set()
    assert full.startswith(answers[0]) and 0 < len(answers[0]) < len(full) / 4


def test_closing_the_page_stops_its_chat_answer(tiny):
    """The chat's stream ends with its page: from its third forward pass the model takes 0.1 s a
    token (a 256-token answer would take about 25 s); once the page is closed the stream's cancel
    event is set, the model stops at its next token or so, and frees the lock other users wait on.
    (Gradio closes the stream as it yields a token: a model that never yields is never closed.)"""
    import time

    service = ChatService(Generator(tiny))
    states, calls = [], []
    stream = service.generator.stream

    def recorded(messages, settings, adapter, state):
        states.append(state)
        yield from stream(messages, settings, adapter, state)

    def slow(module, args):
        calls.append(1)
        if len(calls) >= 3:
            time.sleep(0.1)

    service.generator.stream = recorded
    handle = tiny.model.register_forward_pre_hook(slow)
    try:
        with launched(service) as url, browser() as chromium:
            page = chromium.new_page()
            page.goto(url)
            send_chat(page, "a fine film")
            for _ in range(1200):
                if len(calls) >= 3:
                    break
                page.wait_for_timeout(50)
            page.close()
            closed_at = len(calls)
            assert service.generator.lock.acquire(timeout=60), "the closed page's answer still holds the model"
            service.generator.lock.release()
    finally:
        handle.remove()
    assert states[0].cancel.is_set()  # set only when the stream's consumer left before its end
    assert len(calls) - closed_at < 20


def test_a_fresh_page_offers_adapters_and_pools_added_after_the_start(tmp_path):
    from adapters.host import AdapterHost
    from adapters.registry import AdapterRegistry
    from bot.models import load_model
    from retrieval.embedder import HashEmbedder
    from retrieval.library import PoolLibrary
    from test_adapters_support import PERSONA_ROWS, tiny_base, train_tiny, write_rows

    base = tiny_base(tmp_path / "base")
    loaded = load_model(base, dtype="float32", device="cpu")
    generator = Generator(loaded)
    registry = AdapterRegistry(tmp_path / "adapters")
    service = ChatService(generator, PoolLibrary(tmp_path / "indexes", HashEmbedder()),
                          AdapterHost(loaded, generator.lock, registry))
    with launched(service) as url, browser() as chromium:
        train_tiny(base, write_rows(tmp_path / "rows.jsonl", PERSONA_ROWS), tmp_path / "adapters" / "zebra", max_steps=1)
        pool = write_rows(tmp_path / "reviews.jsonl", [{"input": f"film {i}", "output": "good"} for i in range(4)])
        service.library.build_from_upload("reviews", pool)
        page = chromium.new_page()
        page.goto(url)
        page.get_by_role("tab", name="Compare").click()
        page.wait_for_selector("#compare-models")
        page.wait_for_function("document.querySelector('#compare-models').innerText.includes('zebra')", timeout=15000)
        page.get_by_role("tab", name="Lab").click()
        page.get_by_label("Adapter").last.click()  # the Chat tab's picker comes first, hidden now
        page.get_by_role("option", name="zebra").wait_for(timeout=15000)
        page.get_by_role("tab", name="Chat").click()
        page.get_by_label("Demonstration pool").first.click()
        page.get_by_role("option", name="reviews").wait_for(timeout=15000)
        page.get_by_role("tab", name="Pools").click()
        expect(page.locator("#pools-table")).to_contain_text("reviews")  # its table was filled at the start
        # A gradio_client call opens no page; Gradio used to check its values against the start-up lists.
        client = gradio_client(url)
        answer, demos, _ = client.predict("film 2", "", 4, 0, 1, "zebra", "reviews", "few", 2, "knn", "nearest-last", 0,
                                          api_name="/chat")
        assert answer and len(demos) == 2 and {row[1] for row in demos} <= {f"film {i}" for i in range(4)}
        answers = client.predict("hello", ["base", "zebra"], False, "(none)", "few", 2, "knn", "nearest-last", 4, 0, 0,
                                 api_name="/compare")
        assert answers[0] and answers[1]
        with pytest.raises(Exception, match="unknown adapter 'nobody'|not in the list of choices"):
            client.predict("hi", "", 4, 0, 1, "nobody", "(none)", "few", 2, "knn", "nearest-last", 0, api_name="/chat")


def test_a_failed_pool_build_leaves_the_pickers_usable_and_shows_its_error_as_text(tmp_path):
    """Gradio marks a failed event's outputs "Error": the pickers of the other tabs were outputs of the
    build, and stayed marked and blocked. A toast also rendered HTML that a name or a file carried."""
    from retrieval.embedder import HashEmbedder
    from retrieval.library import PoolLibrary
    from test_adapters_support import write_rows

    service = ChatService(Generator(tiny_loaded()), PoolLibrary(tmp_path / "indexes", HashEmbedder()))
    pool = write_rows(tmp_path / "reviews.jsonl", [{"input": f"film {i}", "output": "good"} for i in range(4)])
    with launched(service) as url, browser() as chromium:
        page = chromium.new_page()
        page.goto(url)
        page.get_by_role("tab", name="Pools").click()
        page.locator("#pool-upload input[type=file]").set_input_files(str(pool))
        page.locator("#pool-name textarea, #pool-name input").first.fill("x<b>bold</b>")
        page.locator("#pool-build").click()
        expect(page.get_by_text("invalid index name 'x<b>bold</b>'").first).to_be_visible()  # as typed
        page.get_by_role("tab", name="Chat").click()
        page.get_by_label("Demonstration pool").first.click()
        page.get_by_role("option", name="sentiment", exact=True).click()  # usable, not under an error badge
        page.get_by_role("tab", name="Pools").click()
        page.locator("#pool-name textarea, #pool-name input").first.fill("reviews")
        page.locator("#pool-build").click()
        expect(page.get_by_text("Built reviews: 4 examples").first).to_be_visible()
        page.get_by_role("tab", name="Chat").click()
        page.get_by_label("Demonstration pool").first.click()
        page.get_by_role("option", name="reviews", exact=True).wait_for(timeout=15000)


def test_a_picked_adapter_that_is_deleted_falls_back_to_base_on_refresh(tmp_path):
    """The refresh used to keep the gone adapter as the picker's value; Gradio then refused every message."""
    import shutil

    from adapters.host import AdapterHost
    from adapters.registry import AdapterRegistry
    from bot.models import load_model
    from test_adapters_support import PERSONA_ROWS, tiny_base, train_tiny, write_rows

    base = tiny_base(tmp_path / "base")
    train_tiny(base, write_rows(tmp_path / "rows.jsonl", PERSONA_ROWS), tmp_path / "adapters" / "zebra", max_steps=1)
    loaded = load_model(base, dtype="float32", device="cpu")
    generator = Generator(loaded)
    service = ChatService(generator, None, AdapterHost(loaded, generator.lock, AdapterRegistry(tmp_path / "adapters")))
    with launched(service) as url, browser() as chromium:
        page = chromium.new_page()
        page.goto(url)
        picker = page.get_by_label("Adapter").first
        picker.click()
        page.get_by_role("option", name="zebra").click()
        shutil.rmtree(tmp_path / "adapters" / "zebra")
        page.get_by_role("button", name="Refresh adapters").click()
        page.wait_for_function("[...document.querySelectorAll('input')].some(i => i.getAttribute('aria-label') === "
                               "'Adapter' && i.value === 'base')", timeout=15000)
        send_chat(page, "hello")
        reply = watch_reply(page)[-1]
    assert reply and "⚠️" not in reply


def test_the_lab_shows_only_the_controls_and_the_description_of_the_picked_experiment(tiny, tmp_path):
    from lab.runner import EXPERIMENTS
    from retrieval.embedder import HashEmbedder
    from retrieval.library import PoolLibrary

    service = ChatService(Generator(tiny), PoolLibrary(tmp_path / "indexes", HashEmbedder()))
    with launched(service) as url, browser() as chromium:
        page = chromium.new_page()
        page.goto(url)
        page.get_by_role("tab", name="Lab").click()
        controls = {"k": page.locator("#lab-k"), "permutations": page.locator("#lab-permutations"),
                    "ood": page.locator("#lab-ood"), "train_sizes": page.locator("#lab-train-sizes"),
                    "train_steps": page.locator("#lab-train-steps")}
        descriptions = {name: page.locator(f"#lab-about-{name}") for name in EXPERIMENTS}
        for experiment, shown, title in [("shots", set(), "Shots"), ("labels", {"k", "ood"}, "Labels"),
                                         ("select", {"k"}, "Selection"), ("finetune", {"k", "train_sizes", "train_steps"},
                                                                               "Fine-tuning"),
                                         ("order", {"k", "permutations"}, "Order")]:
            page.locator("#lab-experiment input").click()
            page.get_by_role("option", name=experiment, exact=True).click()
            for name, control in controls.items():
                (expect(control).to_be_visible if name in shown else expect(control).to_be_hidden)()
            expect(descriptions[experiment]).to_contain_text(f"{title}:")
            for other in set(EXPERIMENTS) - {experiment}:
                expect(descriptions[other]).to_be_hidden()
        chinese = chromium.new_page(locale="zh-CN")
        chinese.goto(url)
        chinese.get_by_role("tab", name="实验室").click()
        expect(chinese.locator("#lab-about-order")).to_contain_text("示例顺序：")
        chinese.locator("#lab-experiment input").click()
        chinese.get_by_role("option", name="labels", exact=True).click()
        expect(chinese.locator("#lab-ood input")).to_have_value("无")  # no out-of-distribution pool


def test_the_second_turn_is_sent_with_the_first(tiny):
    """The page sends its history as Gradio 6's content parts; the model must read every earlier turn."""
    from bot.conversation import build_messages
    from ui.chat import DEFAULT_SYSTEM

    class Recording(Generator):
        """Answers in plain words (the tiny model's bytes would not survive the page unchanged) and
        keeps the messages of each turn."""

        def __init__(self, loaded):
            super().__init__(loaded)
            self.turns = []

        def stream(self, messages, *args, **kwargs):
            self.turns.append(messages)
            yield from ["Nice to meet ", "you, *Zork*."]

    generator = Recording(tiny)
    with launched(ChatService(generator)) as url, browser() as chromium:
        page = chromium.new_page()
        page.goto(url)
        send_chat(page, "My name is Zork.")
        watch_reply(page, timeout=60)
        send_chat(page, "What is my name?")
        expect(page.locator("[data-testid='bot']")).to_have_count(2)
        watch_reply(page, timeout=60)
    first = [{"role": "user", "content": "My name is Zork."}, {"role": "assistant", "content": "Nice to meet you, *Zork*."}]
    assert generator.turns[1] == build_messages("What is my name?", first, DEFAULT_SYSTEM)


def test_stop_button_ends_a_streaming_answer(tiny):
    import time

    from bot.conversation import build_messages
    from bot.settings import GenerationSettings
    from ui.chat import DEFAULT_SYSTEM

    class Slow(Generator):
        def stream(self, *args, **kwargs):
            for piece in super().stream(*args, **kwargs):
                time.sleep(0.05)  # about 13 s for the default 256 tokens
                yield piece

    service = ChatService(Slow(tiny))
    full = service.generator.complete(build_messages("tell me a story", system=DEFAULT_SYSTEM),
                                      GenerationSettings(max_new_tokens=256)).text
    with launched(service) as url, browser() as chromium:
        page = chromium.new_page()
        page.goto(url)
        send_chat(page, "tell me a story")
        stop = page.locator("[data-testid='stop-button']")
        stop.wait_for(timeout=20000)
        reply = page.locator("[data-testid='bot']").last
        expect(reply).to_have_text(re.compile(r"\S"))  # a first piece has arrived
        stop.click()
        expect(stop).to_be_hidden()
        expect(page.locator("#chat-input textarea")).to_be_enabled()
        stopped = reply.inner_text().strip()
        page.wait_for_timeout(1500)
        assert reply.inner_text().strip() == stopped  # no longer growing
        assert 0 < len(stopped) < len(full.strip())


def test_a_training_run_whose_page_closed_can_be_stopped_from_another_page(tmp_path, monkeypatch):
    """Only the page that started a run may stop it; once that page closes, the run goes on and any
    page may stop it (before, nobody could until it ended)."""
    import subprocess

    from adapters.host import AdapterHost
    from adapters.registry import AdapterRegistry
    from bot.models import load_model
    from test_adapters_support import tiny_base

    monkeypatch.setenv("ICL_BOT_ENABLE_TRAINING", "1")
    monkeypatch.setenv("ICL_BOT_ADAPTERS", str(tmp_path / "adapters"))
    base = tiny_base(tmp_path / "base")
    loaded = load_model(base, dtype="float32", device="cpu")
    generator = Generator(loaded)
    service = ChatService(generator, adapters=AdapterHost(loaded, generator.lock, AdapterRegistry(tmp_path / "adapters")))

    def status(page):
        return page.locator("#train-status").inner_text()

    try:
        with launched(service, model_spec=base) as url, browser() as chromium:
            starter, other = chromium.new_page(), chromium.new_page()
            for page in (starter, other):
                page.goto(url)
                page.get_by_role("tab", name="Train").click()
            starter.locator("#train-name textarea").fill("long")
            starter.locator("#train-steps input[type=number]").fill("2000")
            starter.locator("#train-start").click()
            expect(other.locator("#train-status")).to_contain_text("training long: step", timeout=120_000)
            other.locator("#train-stop").click()
            expect(other.get_by_text("only the page that started this training run can stop it")).to_be_visible()
            other.wait_for_timeout(3000)  # two polls: still running
            assert status(other).startswith("training long"), status(other)
            starter.close()
            for _ in range(30):  # the server hears of the closed page within a few seconds
                other.locator("#train-stop").click()
                other.wait_for_timeout(2000)
                if status(other).startswith("stopped"):
                    break
            assert status(other) == "stopped long: no adapter written"
    finally:  # a failed check must not leave a 2000-step run loading the machine
        subprocess.run(["pkill", "-f", f"adapters.train .*{tmp_path / 'adapters' / 'long'}"], check=False)
    assert not (tmp_path / "adapters" / "long").exists()
