"""Merge and export: the standalone model answers as the unmerged adapter does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_adapters_support import PERSONA_ROWS, PROBE, load_tiny, logits, tiny_base, train_tiny, write_rows

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    base = tiny_base(folder / "base")
    return base, train_tiny(base, write_rows(folder / "data.jsonl", PERSONA_ROWS), folder / "adapters" / "zebra")


def test_merged_model_equals_the_unmerged_adapter(adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adapters.export import export

    base, folder = adapter
    out = export(str(folder), tmp_path / "merged", model=base)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    unmerged = PeftModel.from_pretrained(load_tiny(base).model, str(folder)).eval()
    plain = load_tiny(base).model
    assert not torch.allclose(logits(plain, PROBE), logits(unmerged, PROBE), atol=1e-3)  # sanity
    torch.testing.assert_close(logits(merged, PROBE), logits(unmerged, PROBE), rtol=1e-4, atol=1e-4)
    note = json.loads((out / "merged_from.json").read_text())
    assert note["adapter"] == "zebra" and note["base_model"] == base
    assert (out / "tokenizer_config.json").is_file() and not (out / "adapter_config.json").exists()


def test_export_refuses_an_adapter_for_another_base(adapter, tmp_path):
    from adapters.export import export

    other = tiny_base(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="trained on base model"):
        export(str(adapter[1]), tmp_path / "merged", model=other)
    assert not (tmp_path / "merged").exists()


def test_export_cli_end_to_end(adapter, tmp_path):
    base, folder = adapter
    command = [sys.executable, "-m", "adapters.export", "--adapter", str(folder), "--out", str(tmp_path / "m"),
               "--model", base]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"merged model written: {tmp_path / 'm'}\n"  # the result alone: libraries' logs go to stderr
    assert (tmp_path / "m" / "config.json").is_file()


def test_export_refuses_a_folder_that_is_not_a_merged_model_before_merging(adapter, tmp_path, monkeypatch):
    import bot.models
    from adapters.export import export

    base, folder = adapter
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    monkeypatch.setattr(bot.models, "load_model", lambda *a, **k: pytest.fail("loaded the model before refusing"))
    for out, message in ((tmp_path / "notes", "already holds files and is not a merged model"), ("", "no output folder")):
        with pytest.raises(ValueError, match=message):
            export(str(folder), out, model=base)
    from adapters.registry import AdapterRegistry

    with pytest.raises(ValueError, match="unknown adapter 'nobody'"):  # nor an adapter that is not there
        export("nobody", tmp_path / "merged", model=base, registry=AdapterRegistry(tmp_path / "adapters"))
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    monkeypatch.undo()
    first = export(str(folder), tmp_path / "merged", model=base)
    assert export(str(folder), first, model=base) == first  # an earlier export may be replaced
