"""The lab on the real default model: order and labels on a slice of SST-2 agree with the naive scorer."""

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from lab.config import LabConfig
from lab.data import load_data
from lab.demos import random_set
from lab.naive import naive_score
from lab.predict import Case, Predictor
from lab.prompt import Demo, PromptFormat
from lab.runner import run_experiment
from lab.stats import accuracy

pytestmark = pytest.mark.integration
SST2 = SHARED_DATA / "sst2"


def naive_accuracy(loaded, data, demos) -> float:
    predictor = Predictor(loaded.model, loaded.tokenizer, PromptFormat("plain"), data.labels,
                          scorer=lambda p, c: naive_score(loaded.model, loaded.tokenizer, p, c))
    cases = [Case(demos, item.input, item.output) for item in data.test]
    return accuracy(predictor.predict(cases), [item.output for item in data.test])


@pytest.fixture
def sst2_config(tmp_path):
    if not (SST2 / "train.jsonl").is_file():
        pytest.skip("the shared SST-2 data is not here")
    return dict(train=str(SST2 / "train.jsonl"), test=str(SST2 / "test.jsonl"), k=2, n_test=12, seeds=[0],
                permutations=2, probe_size=2)


def test_order_agrees_with_naive(tmp_path, default_model, sst2_config):
    folder = run_experiment("order", LabConfig(**sst2_config, out=str(tmp_path / "o")), loaded=default_model)
    result = json.loads((folder / "result.json").read_text())
    data = load_data(sst2_config["train"], sst2_config["test"], sst2_config["n_test"])
    demos = [Demo(**d) for d in result["sets"][0]["demos"]]
    for entry in result["permutations"]:
        ordered = tuple(demos[i] for i in entry["order"])
        assert entry["accuracy"] == naive_accuracy(default_model, data, ordered)


def test_labels_agree_with_naive(tmp_path, default_model, sst2_config):
    folder = run_experiment("labels", LabConfig(**sst2_config, out=str(tmp_path / "l")), loaded=default_model)
    result = json.loads((folder / "result.json").read_text())
    data = load_data(sst2_config["train"], sst2_config["test"], sst2_config["n_test"])
    none = [r for r in result["results"] if r["condition"] == "none"][0]
    gold = [r for r in result["results"] if r["condition"] == "gold"][0]
    assert none["accuracy"] == naive_accuracy(default_model, data, ())
    assert gold["accuracy"] == naive_accuracy(default_model, data, random_set(data.train, 2, 0))


def test_a_run_names_the_weights_behind_the_model_name(tmp_path, default_model, sst2_config):
    """Offline the default model's hub id stands for the package's quantized GGUF: the run says so."""
    from bot.models import resolve_model

    folder = run_experiment("labels", LabConfig(**sst2_config, out=str(tmp_path / "w")), loaded=default_model)
    result = json.loads((folder / "result.json").read_text())
    source = resolve_model("default")
    expected = f"{Path(source.gguf_file).name}, dequantized" if source.gguf_file else ""
    assert result["weights"] == expected and result["model"] == source.name
    if expected:
        assert f"(float32; weights: {expected})" in (folder / "report.md").read_text()
