"""Our remote backend against llama.cpp's OpenAI-compatible server on the default GGUF file.

Optional: `make test-llamacpp` installs llama-cpp-python[server] (it compiles for several minutes)
and runs this file; `make test` skips it. llama.cpp computes on the quantized blocks, so its
answers are compared with the question's facts, not with ours token for token.
"""

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from bot.conversation import build_messages
from bot.models import packaged_gguf
from bot.settings import GenerationSettings
from servers import free_port

pytestmark = pytest.mark.llamacpp
server_module = pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is optional")


@pytest.fixture(scope="module")
def llamacpp_url():
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(packaged_gguf()), "--host", "127.0.0.1",
               "--port", str(port), "--model_alias", "smollm2", "--n_ctx", "2048",
               "--n_threads", str(os.cpu_count())]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("llama.cpp's server did not start")
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=20)


def test_remote_backend_answers_through_llamacpp(llamacpp_url):
    from bot.models import load_tokenizer
    from bot.remote import RemoteGenerator

    remote = RemoteGenerator(llamacpp_url, tokenizer=load_tokenizer("default"))
    assert remote.name == "smollm2"
    messages = build_messages("What is the capital of France? Answer in one word.")
    pieces = list(remote.stream(messages, GenerationSettings(max_new_tokens=16)))
    assert len(pieces) > 1 and "Paris" in "".join(pieces)
    assert remote.complete(messages, GenerationSettings(max_new_tokens=16)).text == "".join(pieces)
