"""`python -m bot` through a subprocess, as a user runs it."""

import json
import subprocess
import sys

import pytest

from tiny import save_tiny

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def bot(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-model"))


def test_json_answer_from_a_local_model_folder(tiny_folder):
    result = bot("ask", "hello there", "--model", tiny_folder, "--max-new-tokens", "5", "--json", "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert set(answer) >= {"answer", "model", "prompt_tokens", "completion_tokens", "seconds"}
    assert answer["model"] == tiny_folder and answer["completion_tokens"] == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["ask", "hi", "--bogus"], "unrecognized arguments: --bogus"),
        (["ask", "hi", "--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1"),
        (["ask", "hi", "--max-new-tokens", "many"], "invalid positive_int value: 'many'"),
        (["ask", "hi", "--temperature", "-1"], "temperature must be between 0 and 5"),
        (["ask", "hi", "--model", "/no/such/folder"], "unknown model '/no/such/folder'"),
        (["ask", "hi", "--model", "nobody/nothing"], "not in the local Hugging Face cache and the hub cannot be reached"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(args, message):
    result = bot(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


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
