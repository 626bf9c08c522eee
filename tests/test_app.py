"""The web app through gradio_client: the tiny model in-process, the real one as `python app.py`."""

from pathlib import Path

import pytest

from bot.conversation import build_messages
from bot.generation import Generator
from bot.service import ChatService
from bot.settings import GenerationSettings
from servers import gradio_client, launched, running_app


@pytest.fixture(scope="module")
def tiny_app(tiny):
    service = ChatService(Generator(tiny))
    with launched(service) as url:
        yield service, url


def test_chat_endpoint_answers_like_the_service(tiny_app):
    service, url = tiny_app
    answer, demos, prompt = gradio_client(url).predict("hello", "be brief", 9, 0, 1, api_name="/chat")
    expected = service.generator.complete(build_messages("hello", system="be brief"), GenerationSettings(max_new_tokens=9))
    assert answer == expected.text
    assert prompt.startswith("<|im_start|>system\nbe brief<|im_end|>")
    assert demos == [] or demos["data"] in ([], [[None] * 4]), "a zero-shot chat uses no demonstrations"


def test_chat_endpoint_streams(tiny_app):
    _, url = tiny_app
    job = gradio_client(url).submit("the quick brown fox", "sys", 30, 0, 1, api_name="/chat")
    updates = [output[0] for output in job]
    assert len(updates) > 2
    assert all(later.startswith(earlier) for earlier, later in zip(updates, updates[1:]))


@pytest.mark.parametrize(
    "args, message",
    [
        (("hello", "", 9, 9, 1), "Value 9 is greater than maximum value 2"),
        (("   ", "", 9, 0, 1), "the message is empty"),
        (("word " * 3000, "", 9, 0, 1), "the message is too long"),  # raised by the chat function itself
    ],
)
def test_bad_input_comes_back_as_an_error(tiny_app, args, message):
    _, url = tiny_app
    with pytest.raises(Exception, match=message):
        gradio_client(url).predict(*args, api_name="/chat")


def test_a_refused_request_leaves_no_traceback_in_the_server_log(tiny_app, capfd):
    """A request the user must fix used to log two tracebacks each (the ValueError, then Gradio's Error)."""
    _, url = tiny_app
    with pytest.raises(Exception, match="compare at most 5 models at once; 6 are chosen"):
        gradio_client(url).predict("hi", ["base"] * 6, False, "(none)", "few", 2, "knn", "nearest-last", 4, 0, 0,
                                   api_name="/compare")
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


@pytest.mark.integration
def test_real_app_answers_through_gradio_client():
    with running_app() as url:
        answer, _, _ = gradio_client(url).predict(
            "What is the capital of France? Answer in one word.", "You are a helpful assistant.", 32, 0, 1,
            api_name="/chat",
        )
    assert "Paris" in answer


def test_lab_tab_runs_an_experiment_and_lists_it(tmp_path):
    from bot.models import load_model
    from lab.runner import list_runs
    from retrieval.library import PoolLibrary
    from tiny import save_tiny
    from ui.lab import runs_folder

    folder = save_tiny(tmp_path / "tiny")
    service = ChatService(Generator(load_model(folder, dtype="float32")), PoolLibrary())
    with launched(service, model_spec=folder) as url:
        report = gradio_client(url).predict(
            "labels", "sentiment", "sentiment", None, None, 2, 6, "0", 2, "base", api_name="/lab")
    assert "gold" in report and "random" in report and "none" in report
    assert report.startswith("# labels: sentiment\n")  # the pool's name, not its folder's ("pools")
    assert "retrieval/pools/sentiment.jsonl" in report and str(Path.cwd()) not in report  # no server paths
    assert "![plot]" not in report  # the image beside it shows the plot; the link had no target in the page
    runs = list_runs(runs_folder())  # the plot and the runs list are the page's, checked in test_browser.py
    assert [run["experiment"] for run in runs] == ["labels"] and (Path(runs[0]["path"]) / "plot.png").is_file()


def test_lab_tab_sweeps_finetuning_over_training_sizes(tmp_path):
    from bot.models import load_model
    from retrieval.library import PoolLibrary
    from tiny import save_tiny

    folder = save_tiny(tmp_path / "tiny")
    service = ChatService(Generator(load_model(folder, dtype="float32")), PoolLibrary())
    with launched(service, model_spec=folder) as url:
        client = gradio_client(url)
        lab = ("finetune", "sentiment", "sentiment", None, None, 2, 6, "0", 2, "base", "none")
        with pytest.raises(Exception, match="training sizes must be whole numbers separated by spaces or commas, "
                                            "got '8 lots'"):
            client.predict(*lab, "8 lots", api_name="/lab")
        report = client.predict(*lab, "4, 8", 2, api_name="/lab")
    assert "Adapter training: 2 steps" in report and "| 4 | finetuned |" in report and "| 8 | both |" in report and "finetuned - prompting, 8 rows" in report


def test_the_compare_tabs_seed_draws_its_random_demonstrations(tiny, tmp_path):
    """Seed 0 and seed 7 show the random sets that retrieval draws with those seeds (it was always seed 0)."""
    from retrieval.embedder import HashEmbedder
    from retrieval.library import PoolLibrary
    from retrieval.pool import builtin_pools, load_pool
    from retrieval.select import select_demos

    service = ChatService(Generator(tiny), PoolLibrary(tmp_path / "indexes", HashEmbedder()))
    pool = load_pool(builtin_pools()["sentiment"])
    shown = {}
    with launched(service) as url:
        client = gradio_client(url)
        for seed in (0, 7):
            *_, demos, _ = client.predict("a fine film", ["base"], True, "sentiment", "few", 3, "random", "nearest-last",
                                          4, 0, seed, "", api_name="/compare")
            shown[seed] = [row[1] for row in demos["data"]]
    for seed in (0, 7):
        expected = select_demos(pool, "a fine film", 3, strategy="random", seed=seed)
        assert sorted(shown[seed]) == sorted(demo.example.input for demo in expected)
    assert shown[0] != shown[7] and len(demos["data"]) == 3


def test_the_compare_tabs_top_p_reaches_the_sampler(tiny, tmp_path):
    """top-p is the last /compare argument: the page's answer at top-p 0.3 is the service's own at
    top-p 0.3 (same seed), and differs from the answer over the whole vocabulary."""
    from retrieval.embedder import HashEmbedder
    from retrieval.library import PoolLibrary

    service = ChatService(Generator(tiny), PoolLibrary(tmp_path / "indexes", HashEmbedder()))
    few = ("(none)", "few", 2, "knn", "nearest-last")
    with launched(service) as url:
        client = gradio_client(url)
        narrow, wide = (client.predict("a fine film", ["base"], False, *few, 12, 1, 5, "sys", top_p,
                                       api_name="/compare")[0]["value"] for top_p in (0.3, 1))
    settings = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=0.3, seed=5)
    assert narrow == service.compare("a fine film", ["base"], system="sys", settings=settings)[0].text
    assert narrow != wide  # sanity: top-p changes what is sampled


def test_the_compare_tabs_stop_ends_the_answers_where_they_are(tiny, tmp_path):
    """The model is held at its third forward pass until /compare_stop has run: the answers then end
    at once, each a start of the answer the same greedy run gives without a stop."""
    import threading

    from retrieval.embedder import HashEmbedder
    from retrieval.library import PoolLibrary

    service = ChatService(Generator(tiny), PoolLibrary(tmp_path / "indexes", HashEmbedder()))
    settings = GenerationSettings(max_new_tokens=60, temperature=0.0)
    full = service.compare("a fine film", ["base"], system="sys", settings=settings)[0]
    assert full.completion.completion_tokens > 20  # sanity: unstopped, the answer runs long
    calls, reached, stopped = [], threading.Event(), threading.Event()

    def hold(module, args):
        calls.append(1)
        if len(calls) == 3:
            reached.set()
            stopped.wait(60)

    handle = tiny.model.register_forward_pre_hook(hold)
    try:
        with launched(service) as url:
            client = gradio_client(url)
            job = client.submit("a fine film", ["base"], False, "(none)", "few", 2, "knn", "nearest-last", 60, 0, 0,
                                "sys", 1, api_name="/compare")
            assert reached.wait(60)
            client.predict(api_name="/compare_stop")
            stopped.set()
            answer = job.result(timeout=60)[0]["value"]
    finally:
        handle.remove()
        stopped.set()  # a failed test must not leave a server thread held in the shared model
    assert answer and full.text.startswith(answer) and len(answer) < len(full.text) / 4


def test_the_chat_tabs_demo_seed_draws_its_random_demonstrations(tiny, tmp_path):
    """The chat's demo seed (the last argument of /chat) draws the random set that retrieval draws
    with it; without it, seed 0. A negative seed is refused with its name."""
    from retrieval.embedder import HashEmbedder
    from retrieval.library import PoolLibrary
    from retrieval.pool import builtin_pools, load_pool
    from retrieval.select import select_demos

    service = ChatService(Generator(tiny), PoolLibrary(tmp_path / "indexes", HashEmbedder()))
    pool = load_pool(builtin_pools()["sentiment"])
    few = ("sentiment", "few", 3, "random", "nearest-last")
    with launched(service) as url:
        client = gradio_client(url)
        shown = {seed: [row[1] for row in client.predict("a fine film", "sys", 4, 0, 1, "base", *few, seed,
                                                         api_name="/chat")[1]] for seed in (0, 7)}
        default = [row[1] for row in gradio_client(url).predict("a fine film", "sys", 4, 0, 1, "base", *few,
                                                                api_name="/chat")[1]]
        with pytest.raises(Exception, match="less than minimum value 0"):  # Gradio checks the box's minimum
            client.predict("a fine film", "sys", 4, 0, 1, "base", *few, -1, api_name="/chat")
    for seed in (0, 7):
        expected = select_demos(pool, "a fine film", 3, strategy="random", seed=seed)
        assert sorted(shown[seed]) == sorted(demo.example.input for demo in expected)
    assert shown[0] != shown[7] and default == shown[0]


def test_every_command_line_option_is_described(capsys, monkeypatch):
    import app
    from test_cli import help_entries

    for variable in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "ICL_BOT_MODEL", "ICL_BOT_DTYPE", "ICL_BOT_DECODER"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(SystemExit):
        app.parse_args(["--help"])
    entries = help_entries(capsys.readouterr().out)
    assert all(entries.values()), [flag for flag, text in entries.items() if not text]
    for flag, default in {"--host": "127.0.0.1", "--port": "7860", "--model": "default", "--dtype": "auto",
                          "--device": "auto"}.items():
        assert f"(default: {default})" in entries[flag], (flag, entries[flag])
    assert "LoRA adapter requests" in entries["--fast-decode"]  # greedy adapter requests decode fast too


def test_a_bad_device_stops_the_app_with_one_line(capsys, monkeypatch, tmp_path):
    import app

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # main sets it when unset
    with pytest.raises(SystemExit) as stopped:
        app.main(["--device", "bogus", "--model", "/no/such/model"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: unknown device 'bogus'; choose auto, cpu, cuda")


def test_failed_exchanges_never_reach_the_model_again():
    from ui.chat import FAILED, without_failures

    def turn(role, content):
        return {"role": role, "content": content}

    history = [turn("user", "hi"), turn("assistant", "hello"), turn("user", "word " * 9000),
               turn("assistant", f"{FAILED}the message is too long"), turn("user", "and now?"), turn("assistant", "fine")]
    assert without_failures(history) == [history[0], history[1], history[4], history[5]]
    assert without_failures(history[:4]) == history[:2]
    as_parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in history]  # the page's
    assert without_failures(as_parts) == [as_parts[0], as_parts[1], as_parts[4], as_parts[5]]


def test_no_choice_is_taken_for_an_interface_text_key(tiny):
    """Gradio translates any string that equals an I18n key, choices included: the Lab's experiment
    'order' once showed as the label "Order" (and would have shown in Chinese for zh browsers)."""
    import gradio as gr

    import app
    from bot.service import ChatService
    from retrieval.embedder import HashEmbedder
    from retrieval.library import PoolLibrary
    from ui.text import EN

    demo = app.build_app(ChatService(Generator(tiny), PoolLibrary(embedder=HashEmbedder())))
    pickers = [block for block in demo.blocks.values() if isinstance(block, (gr.Dropdown, gr.Radio, gr.CheckboxGroup))]
    values = {str(value) for picker in pickers for _, value in picker.choices}
    assert {"order", "knn", "few"} <= values  # sanity: the pickers were found
    assert not values & set(EN)


def test_a_notice_is_shown_once_until_it_changes():
    """The chat shows a notice again only when it differs from the one this browser session last saw."""
    from ui.chat import LastNotices

    notices = LastNotices(sessions=2)
    history = "earlier turns are not sent"
    shown = [notices.fresh("a", history), notices.fresh("a", history), notices.fresh("b", history),
             notices.fresh("a", "2 demonstrations dropped"), notices.fresh("a", history), notices.fresh(None, history)]
    assert shown == [True, False, True, True, True, True]
    notices.fresh("c", history)  # a third session: the oldest ("b") is forgotten, and would see it again
    assert notices.fresh("b", history) and not notices.fresh("c", history)
