"""`python -m bot` through a subprocess, as a user runs it."""

import json
import os
import re
import subprocess
import sys

import pytest

from tiny import save_tiny

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def bot(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def help_entries(text: str) -> dict[str, str]:
    """`--help` output as {flag: its description}, continuation lines joined."""
    entries, flag = {}, None
    for line in text.splitlines():
        if line.startswith("  -"):
            head, _, rest = line.strip().partition("  ")
            flag = head.split()[0].rstrip(",")
            entries[flag] = rest.strip()
        elif flag and line.startswith("    "):
            entries[flag] = f"{entries[flag]} {line.strip()}".strip()
        else:
            flag = None
    entries.pop("-h", None)
    return entries


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-model"))


def test_json_answer_from_a_local_model_folder(tiny_folder):
    result = bot("ask", "hello there", "--model", tiny_folder, "--max-new-tokens", "5", "--json", "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert set(answer) == {"answer", "model", "adapter", "prompt_tokens", "completion_tokens", "seconds",
                           "finish_reason", "prompt", "notice"}  # README's list; few-shot adds "demos"
    assert answer["model"] == tiny_folder and answer["completion_tokens"] == 5


def test_ask_decodes_natively_by_default_with_generates_answer(tiny_folder):
    common = ["ask", "hello there", "--model", tiny_folder, "--max-new-tokens", "12", "--json"]
    plain = bot(*common, "--no-fast-decode", "--dtype", "float32")
    native = bot(*common, "--decoder", "native")  # the native decoder or an error; fp32 is what auto picks
    default = bot(*common)
    assert plain.returncode == native.returncode == default.returncode == 0, native.stderr + default.stderr
    answers = [json.loads(result.stdout)["answer"] for result in (plain, native, default)]
    assert answers[0] and answers[0] == answers[1] == answers[2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["ask", "hi", "--bogus"], "unrecognized arguments: --bogus"),
        (["ask", "hi", "--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1"),
        (["ask", "hi", "--max-new-tokens", "many"], "invalid positive_int value: 'many'"),
        (["ask", "hi", "--temperature", "-1"], "temperature must be between 0 and 2"),
        (["ask", "hi", "--model", "/no/such/folder"], "model '/no/such/folder': no such folder or .gguf file"),
        (["ask", "hi", "--model", "./nope"], "model './nope': no such folder or .gguf file"),
        (["ask", "hi", "--model", "~/nope"], "model '~/nope': no such folder or .gguf file"),
        (["ask", "hi", "--model", "plainword"], "unknown model 'plainword': expected 'default', a local folder"),
        (["ask", "hi", "--model", "nobody/nothing"], "not in the local Hugging Face cache and the hub cannot be reached"),
        (["ask", "hi", "--device", "bogus"], "unknown device 'bogus'; choose auto, cpu, cuda, cuda:N or mps"),
        (["ask", "hi", "--device", "cuda"], "device 'cuda' is not available on this machine; available: cpu"),
        # refused before the model loads: a model that cannot load would be the error otherwise
        (["ask", "  ", "--model", "nobody/nothing"], "error: the message is empty"),
        (["ask", "hi", "--pool", "nowhere", "--model", "nobody/nothing"], "error: unknown pool 'nowhere'; available: "),
        (["ask", "hi", "--pool", "my/pool.csv", "--model", "nobody/nothing"],
         "error: pool file 'my/pool.csv' does not exist"),
        (["ask", "hi", "--pool", "sentiment", "--mode", "one", "--k", "4", "--model", "nobody/nothing"],
         "error: --k sets the demonstrations of --mode few; --mode one shows one (drop --k, or use --mode few)"),
        (["ask", "hi", "--pool", "sentiment", "--diversity", "2", "--model", "nobody/nothing"],
         "error: diversity must be between 0 and 1, got 2.0"),
        (["ask", "--order", "permutation", "--permutation", "1", "0", "good film"],  # the list took the question
         "argument --permutation: 'good film' is not a whole number; the list takes every word after the flag, so "
         "put the question before it, or end the list with --"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(args, message):
    result = bot(*args, env={"CUDA_VISIBLE_DEVICES": ""})  # no GPU, even on a machine that has one
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_a_bad_flag_points_to_help():
    result = bot("ask", "hi", "--top-p")
    assert result.returncode == 2
    assert result.stderr == "python -m bot ask: error: argument --top-p: expected one argument " \
                            "(see python -m bot ask --help)\n"


def test_devices_are_checked_against_what_the_machine_has(monkeypatch):
    from bot import models

    monkeypatch.setattr(models, "_gpu_count", lambda: 1)
    monkeypatch.setattr(models, "_mps_available", lambda: False)
    assert [models.check_device(d) for d in ("cpu", "cuda", "cuda:0")] == ["cpu", "cuda", "cuda:0"]
    with pytest.raises(models.ModelError, match="device 'cuda:1' is not available on this machine; "
                                                "available: cpu, cuda$"):
        models.check_device("cuda:1")
    with pytest.raises(models.ModelError, match="device 'mps' is not available"):
        models.check_device("mps")
    with pytest.raises(models.ModelError, match="unknown device 'xla'"):
        models.check_device("xla")


def test_every_option_has_help_with_its_default():
    entries = help_entries(bot("ask", "--help").stdout)
    flagged = {"--top-p", "--seed", "--dtype", "--mode", "--select", "--order", "--style", "--max-new-tokens"}
    assert flagged <= set(entries)
    assert all(entries.values()), [flag for flag, text in entries.items() if not text]
    defaults = {"--top-p": "1.0", "--seed": "none", "--dtype": "auto", "--device": "auto", "--mode": "few",
                "--select": "knn", "--order": "nearest-last", "--style": "chat", "--max-new-tokens": "256", "--k": "4"}
    for flag, default in defaults.items():
        assert f"(default: {default})" in entries[flag], (flag, entries[flag])
    assert "0 gives the zero-shot prompt" in entries["--k"]  # few mode with k=0 is zero-shot, as in the UI


@pytest.mark.integration
def test_default_model_knows_the_capital_of_france():
    result = bot("ask", "--json", "What is the capital of France? Answer in one word.")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert "Paris" in answer["answer"]
    assert answer["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.integration
def test_fewshot_json_lists_demos_in_ascending_similarity_before_the_query(tmp_path):
    query = "The plot dragged but the actors were wonderful."
    result = bot("ask", "--pool", "sentiment", "--mode", "few", "--k", "4", "--select", "knn", "--order",
                 "nearest-last", "--json", "--max-new-tokens", "4", query)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    demos, prompt = answer["demos"], answer["prompt"]
    assert len(demos) == 4
    scores = [d["score"] for d in demos]
    assert scores == sorted(scores) and len(set(scores)) == 4
    positions = [prompt.index(d["input"]) for d in demos]
    assert positions == sorted(positions) and positions[-1] < prompt.rindex(query)


@pytest.mark.parametrize("module, args, message", [
    ("adapters", ["lis"], "argument command: invalid choice: 'lis' (choose from 'list')"),
    ("adapters.train", ["--data", "x.jsonl", "--name", "y", "--fill", "noequals"],
     "argument --fill: expected KEY=VALUE, got 'noequals'"),
    ("adapters.export", ["--adapter", "x", "--out", "y", "--dtype", "fp16"],
     "argument --dtype: invalid choice: 'fp16' (choose from 'float32', 'bfloat16', 'float16')"),
])
def test_the_adapter_commands_answer_a_bad_flag_in_one_line(module, args, message):
    """As the bot, retrieval and lab commands do: no usage block of twenty lines."""
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"python -m {module}: error: {message} (see python -m {module} --help)"]


def app(*args, env=None):
    return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_a_bad_port_is_refused_in_one_line_before_the_model_loads(tiny_folder):
    """`--port -1` used to load the model, print "serving", then dump a traceback; a taken port
    printed "serving" and then failed."""
    import socket

    result = app("--port", "-1", "--model", str(tiny_folder))
    assert result.returncode == 2 and "a port is a whole number from 1 to 65535, got '-1'" in result.stderr
    result = app("--model", str(tiny_folder), env={"GRADIO_SERVER_PORT": "70000"})  # the default is checked too
    assert result.returncode == 2 and "a port is a whole number from 1 to 65535, got '70000'" in result.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = app("--host", "127.0.0.1", "--port", str(port), "--model", f"{tiny_folder}/missing")
    # a missing model would fail later: the port is checked first
    assert result.returncode == 2 and result.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "serving" not in result.stdout


@pytest.mark.parametrize("host, family", [("127.0.0.1", "AF_INET"), ("::1", "AF_INET6")])
def test_the_port_check_binds_as_the_server_would_for_ipv4_and_ipv6(host, family):
    """A port taken on that host is refused by name; once freed it is taken. A host that does not
    resolve is named too."""
    import socket

    from app import check_port_free

    if not socket.has_ipv6 and family == "AF_INET6":
        pytest.skip("no IPv6 on this machine")
    with socket.socket(getattr(socket, family)) as taken:
        taken.bind((host, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"cannot listen on {re.escape(host)}:{port}: Address already in use"):
            check_port_free(host, port)
    check_port_free(host, port)
    with pytest.raises(ValueError, match="cannot listen on no-such-host.invalid:8000: "):
        check_port_free("no-such-host.invalid", 8000)


def test_a_data_folder_that_cannot_be_made_is_named_before_the_model_loads(tmp_path, tiny_folder):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    home = blocker / "home"
    for run in (lambda: bot("ask", "--model", str(tiny_folder), "hi", env={"ICL_BOT_HOME": str(home)}),
                lambda: app("--model", str(tiny_folder), env={"ICL_BOT_HOME": str(home)})):
        result = run()
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip() == f"error: $ICL_BOT_HOME {home} cannot be created: Not a directory"
