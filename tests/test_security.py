"""Security properties as tests: no pickle in the product, no remote code by default, the UI's
login, the upload size limit, and training from the UI off unless the operator turns it on."""

from __future__ import annotations

import ast
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bot.generation import Generator
from bot.service import ChatService
from servers import serving

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ["app.py", "bot", "retrieval", "adapters", "lab", "ui", "bench"]
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def product_files() -> list[str]:
    files = []
    for entry in PRODUCT:
        path = ROOT / entry
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return [str(path.relative_to(ROOT)) for path in files]


def pickle_uses(source: str) -> list[str]:
    """Each way `source` can unpickle: pickle-family imports, torch.load without weights_only=True,
    numpy.load with allow_pickle other than False, pandas.read_pickle."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and unpickles(node):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def unpickles(call: ast.Call) -> bool:
    keywords = {keyword.arg: keyword.value for keyword in call.keywords}
    owner, method = ast.unparse(call.func.value), call.func.attr
    if method == "load" and owner == "torch":
        return constant(keywords, "weights_only") is not True
    if method == "load" and owner in ("np", "numpy"):
        return "allow_pickle" in keywords and constant(keywords, "allow_pickle") is not False
    return method in ("read_pickle", "to_pickle")


def constant(keywords: dict, name: str):
    """The keyword's value when it is a literal; None when absent or computed."""
    value = keywords.get(name)
    return value.value if isinstance(value, ast.Constant) else None


def test_the_scanner_finds_each_kind_of_pickle():
    hostile = ("import pickle\nfrom dill import loads\nimport torch, numpy as np, pandas as pd\n"
               "torch.load('x')\ntorch.load('x', weights_only=False)\nnp.load('x', allow_pickle=True)\n"
               "pd.read_pickle('x')\n")
    assert len(pickle_uses(hostile)) == 6
    assert pickle_uses("import torch, numpy as np\ntorch.load('x', weights_only=True)\nnp.load('x')\n") == []


@pytest.mark.parametrize("path", product_files())
def test_no_pickle_in_product_code(path):
    assert pickle_uses((ROOT / path).read_text(encoding="utf-8")) == []


def test_models_load_without_remote_code_by_default(tmp_path, monkeypatch):
    import transformers

    from bot.models import load_model, load_tokenizer
    from tiny import save_tiny

    folder = save_tiny(tmp_path / "tiny")
    seen = []

    def spy(cls):
        real = cls.from_pretrained

        def from_pretrained(*args, **kwargs):
            seen.append((cls.__name__, kwargs.get("trust_remote_code")))
            return real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", from_pretrained)

    spy(transformers.AutoModelForCausalLM)
    spy(transformers.AutoTokenizer)
    load_model(folder, dtype="float32", device="cpu")
    load_tokenizer(folder)
    assert seen == [("AutoTokenizer", False), ("AutoModelForCausalLM", False), ("AutoTokenizer", False)]


def test_command_lines_leave_remote_code_off_unless_asked():
    import app
    from bot.cli import build_parser

    assert app.parse_args([]).trust_remote_code is False
    assert app.parse_args(["--trust-remote-code"]).trust_remote_code is True
    assert build_parser().parse_args(["ask", "hi"]).trust_remote_code is False


@pytest.fixture(scope="module")
def guarded(tiny):
    import app

    with serving(app.create_server(ChatService(Generator(tiny)), users=[("alice", "pw")])) as url:
        yield url


def post(url: str, body: dict, headers: dict | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_login_guards_the_gradio_api(guarded):
    from servers import gradio_client

    status, _ = post(f"{guarded}/gradio_api/call/chat", {"data": ["hello", "sys", 4, 0, 1]})
    assert status == 401
    with pytest.raises(ValueError, match="Could not login"):
        gradio_client(guarded, auth=("alice", "wrong"))
    client = gradio_client(guarded, auth=("alice", "pw"))
    answer, _, _ = client.predict("hello", "sys", 4, 0, 1, api_name="/chat")
    assert isinstance(answer, str) and answer


@pytest.fixture(scope="module")
def open_server(tiny):
    import app

    with serving(app.create_server(ChatService(Generator(tiny)))) as url:
        yield url


def upload(url: str, size: int) -> int:
    boundary = "icl-bot-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"pool.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n")
    body = head.encode() + b"x" * size + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}/gradio_api/upload", body,
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_uploads_above_the_app_limit_are_refused(open_server):
    import app
    from retrieval.library import MAX_UPLOAD_BYTES

    assert app.MAX_UPLOAD == "20mb" and MAX_UPLOAD_BYTES == 20 * 1024 * 1024  # gradio reads "mb" as MiB
    assert upload(open_server, 1000) == 200
    assert upload(open_server, MAX_UPLOAD_BYTES + 1) == 413


def test_pool_library_refuses_files_above_its_limit(tmp_path):
    from retrieval.embedder import HashEmbedder
    from retrieval.library import LibraryError, PoolLibrary

    library = PoolLibrary(root=tmp_path / "indexes", embedder=HashEmbedder(), max_upload_bytes=100)
    row = '{"input": "fine", "output": "positive"}\n'
    (tmp_path / "small.jsonl").write_text(row * 2)
    (tmp_path / "big.jsonl").write_text(row * 3)
    assert len(library.build_from_upload("small", tmp_path / "small.jsonl")) == 1  # the duplicate is dropped
    with pytest.raises(LibraryError, match=r"the file is 120 bytes; the limit is 100 bytes"):
        library.build_from_upload("big", tmp_path / "big.jsonl")
    assert "big" not in library.names()


def shown_texts(tiny_model, tmp_path) -> list[str]:
    """The value and label of every component of the app (interface texts in Gradio's i18n form)."""
    import threading

    import app
    from adapters.host import AdapterHost
    from adapters.registry import AdapterRegistry

    service = ChatService(Generator(tiny_model), adapters=AdapterHost(tiny_model, threading.Lock(),
                                                                       AdapterRegistry(tmp_path / "adapters")))
    demo = app.build_app(service)
    return [str(getattr(block, attribute, "")) for block in demo.blocks.values() for attribute in ("value", "label")]


@pytest.mark.parametrize("setting, allowed", [(None, False), ("0", False), ("no", False), ("1", True), ("true", True)])
def test_training_from_the_ui_is_off_unless_enabled(tmp_path, monkeypatch, setting, allowed):
    from tiny import tiny_loaded
    from ui.text import t
    from ui.train import training_enabled

    if setting is None:
        monkeypatch.delenv("ICL_BOT_ENABLE_TRAINING", raising=False)
    else:
        monkeypatch.setenv("ICL_BOT_ENABLE_TRAINING", setting)
    assert training_enabled() is allowed
    texts = shown_texts(tiny_loaded(), tmp_path)
    assert (str(t("start_training")) in texts, str(t("training_disabled")) in texts) == (allowed, not allowed)
