"""The web app through gradio_client: the tiny model in-process, the real one as `python app.py`."""

import pytest
from gradio_client import Client

from bot.conversation import build_messages
from bot.generation import Generator
from bot.service import ChatService
from bot.settings import GenerationSettings
from servers import free_port, running_app


@pytest.fixture(scope="module")
def tiny_app(tiny):
    import app

    service = ChatService(Generator(tiny))
    demo = app.build_app(service)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, i18n=app.I18N)
    yield service, f"http://127.0.0.1:{port}/"
    demo.close()


def test_chat_endpoint_answers_like_the_service(tiny_app):
    service, url = tiny_app
    answer, demos, prompt = Client(url).predict("hello", "be brief", 9, 0, 1, api_name="/chat")
    expected = service.generator.complete(build_messages("hello", system="be brief"), GenerationSettings(max_new_tokens=9))
    assert answer == expected.text
    assert prompt.startswith("<|im_start|>system\nbe brief<|im_end|>")
    assert demos == [] or demos["data"] in ([], [[None] * 4]), "a zero-shot chat uses no demonstrations"


def test_chat_endpoint_streams(tiny_app):
    _, url = tiny_app
    job = Client(url).submit("the quick brown fox", "sys", 30, 0, 1, api_name="/chat")
    updates = [output[0] for output in job]
    assert len(updates) > 2
    assert all(later.startswith(earlier) for earlier, later in zip(updates, updates[1:]))


@pytest.mark.parametrize(
    "args, message",
    [
        (("hello", "", 9, 9, 1), "Value 9 is greater than maximum value 2"),
        (("   ", "", 9, 0, 1), "the message is empty"),
    ],
)
def test_bad_input_comes_back_as_an_error(tiny_app, args, message):
    _, url = tiny_app
    with pytest.raises(Exception, match=message):
        Client(url).predict(*args, api_name="/chat")


@pytest.mark.integration
def test_real_app_answers_through_gradio_client():
    with running_app() as url:
        answer, _, _ = Client(url).predict(
            "What is the capital of France? Answer in one word.", "You are a helpful assistant.", 32, 0, 1,
            api_name="/chat",
        )
    assert "Paris" in answer
