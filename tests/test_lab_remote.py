"""The lab on a remote server (`--backend openai`): the same numbers as the lab on the same weights here."""

import json
import subprocess
import sys

import numpy as np
import pytest

from lab.config import LabConfig
from lab.errors import LabError
from lab.runner import run_experiment
from servers import serving
from test_lab_experiments import tiny_files

ADAPTERS = ["pirate", "poet"]


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """A tiny model on disk, a server over it with two adapters, and one adapter saved as a folder."""
    import app
    from bot.generation import Generator
    from bot.models import load_model
    from bot.service import ChatService
    from tiny import save_tiny, with_lora_adapters

    folder = tmp_path_factory.mktemp("lab-remote")
    model = save_tiny(folder / "model")
    served = with_lora_adapters(load_model(model, dtype="float32", device="cpu"), ADAPTERS)
    served.model.save_pretrained(folder / "saved", selected_adapters=["pirate"])
    with serving(app.create_server(ChatService(Generator(served)))) as url:
        yield model, f"{url}/v1", folder / "saved" / "pirate"


def run_both(tmp_path, remote, experiment, adapter_folder=None, **overrides):
    """Run an experiment locally and through the server; return both result.json records."""
    model, url, _ = remote
    train, test = tiny_files(tmp_path)
    fields = dict(train=train, test=test, model=model, k=2, seeds=[0, 1], embedder="hash", probe_size=3,
                  permutations=2)
    fields.update(overrides)
    adapter = fields.pop("adapter", None)
    local = LabConfig(**fields, adapter=adapter_folder, out=str(tmp_path / "local"))
    far = LabConfig(**fields, adapter=adapter, backend="openai", base_url=url, api_key="secret",
                    out=str(tmp_path / "remote"))
    results = []
    for config in (local, far):
        folder = run_experiment(experiment, config)
        results.append(json.loads((folder / "result.json").read_text()))
    return results


def test_labels_run_remotely_gives_the_local_accuracies(tmp_path, remote):
    local, far = run_both(tmp_path, remote, "labels", calibrate=True)
    assert far["dtype"] == "remote" and far["config"]["backend"] == "openai"
    assert "api_key" not in far["config"]
    assert len(far["results"]) == len(local["results"]) == 6
    for mine, theirs in zip(local["results"], far["results"]):
        assert (theirs["condition"], theirs["seed"], theirs["accuracy"]) == (mine["condition"], mine["seed"],
                                                                            mine["accuracy"])


def test_order_with_generated_probes_runs_remotely(tmp_path, remote):
    """GlobalE/LocalE sample probe inputs from the model: the remote samples are the local ones."""
    local, far = run_both(tmp_path, remote, "order")
    for mine, theirs in zip(local["sets"], far["sets"]):
        assert theirs["lu"]["probes"] == mine["lu"]["probes"]
        assert theirs["lu"]["globale_scores"] == pytest.approx(mine["lu"]["globale_scores"], abs=1e-4)
    assert [p["accuracy"] for p in far["permutations"]] == [p["accuracy"] for p in local["permutations"]]


def prompts_and_labels(tokenizer):
    from lab.prompt import Demo, PromptFormat

    fmt = PromptFormat("plain")
    demos = (Demo("great film", "positive"), Demo("lazy dog", "negative"))
    prompts = [fmt.build(tokenizer, demos, query) for query in ["quick fox", "a terrible long review", "x"]]
    return prompts, [fmt.continuation(label) for label in ["positive", "negative", "very negative indeed"]]


@pytest.mark.parametrize("adapter", [None, "pirate"])
def test_remote_scores_equal_the_cached_scorer_on_a_fresh_model(remote, adapter):
    """Label scores from the server equal the local scorer's on a freshly loaded model (with the adapter's folder)."""
    from bot.models import load_model
    from lab.context import with_adapter
    from lab.remote import RemoteModel
    from lab.scorer import CachedScorer

    model, url, folder = remote
    loaded = load_model(model, dtype="float32", device="cpu")
    prompts, labels = prompts_and_labels(loaded.tokenizer)
    base = CachedScorer(loaded.model, loaded.tokenizer).score(prompts, labels)
    expected = base if adapter is None else CachedScorer(with_adapter(loaded, folder).model, loaded.tokenizer).score(
        prompts, labels)
    if adapter:
        assert not np.allclose(expected, base, atol=1e-3), "sanity check: the adapter changes the scores"
    scores = RemoteModel(url, loaded.tokenizer, model=adapter, batch_size=4).score(prompts, labels)
    assert np.allclose(scores, expected, atol=1e-4)


def test_remote_errors_are_lab_errors(tmp_path, remote):
    model, url, _ = remote
    train, test = tiny_files(tmp_path)
    with pytest.raises(LabError, match="cannot reach"):
        run_experiment("labels", LabConfig(train=train, test=test, model=model, embedder="hash", backend="openai",
                                           base_url="http://127.0.0.1:9/v1", out=str(tmp_path / "a")))
    with pytest.raises(LabError, match="unknown model 'nope'"):
        run_experiment("labels", LabConfig(train=train, test=test, model=model, embedder="hash", backend="openai",
                                           base_url=url, adapter="nope", k=2, seeds=[0], out=str(tmp_path / "b")))
    with pytest.raises(LabError, match="finetune experiment trains an adapter here"):
        run_experiment("finetune", LabConfig(train=train, test=test, model=model, embedder="hash", k=2,
                                             backend="openai", base_url=url, out=str(tmp_path / "c")))
    with pytest.raises(LabError, match="needs base_url"):
        LabConfig(train=train, test=test, backend="openai")


def test_cli_runs_on_a_remote_server(tmp_path, remote):
    model, url, _ = remote
    train, test = tiny_files(tmp_path)
    command = [sys.executable, "-m", "lab", "labels", "--train", train, "--test", test, "--model", model,
               "--k", "2", "--seeds", "0", "--embedder", "hash", "--backend", "openai", "--base-url", url,
               "--out", str(tmp_path / "cli")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "cli" / "result.json").read_text())["dtype"] == "remote"


def test_the_ui_lab_runs_where_the_chat_runs(remote):
    """An app started with --backend openai sends its Lab tab's experiments to the same server."""
    from bot.remote import RemoteGenerator
    from bot.service import ChatService
    from ui.lab import model_fields

    model, url, _ = remote
    fields = model_fields(ChatService(RemoteGenerator(url, api_key="k")), "pirate")
    assert fields == {"backend": "openai", "base_url": url, "api_key": "k", "adapter": "pirate",
                      "remote_model": str(model)}  # the server's name for its base model


def test_a_server_with_another_tokenizer_is_refused(remote):
    """Token ids only mean the same thing under the same tokenizer: a mismatch is caught up front."""
    from bot.models import load_tokenizer
    from lab.remote import RemoteModel

    _, url, _ = remote
    with pytest.raises(LabError, match="splits text into other tokens than the local tokenizer"):
        RemoteModel(url, load_tokenizer("default"))
