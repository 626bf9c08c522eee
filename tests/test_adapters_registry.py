"""The registry: listing, and every refusal before an adapter may touch the model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from test_adapters_support import PERSONA_ROWS, load_tiny, tiny_base, train_tiny, write_rows

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny base and one trained adapter, kept pristine: tests copy it before breaking it."""
    folder = tmp_path_factory.mktemp("registry")
    base = tiny_base(folder / "base")
    adapter = train_tiny(base, write_rows(folder / "data.jsonl", PERSONA_ROWS), folder / "pristine" / "persona", max_steps=2)
    return base, adapter


@pytest.fixture
def root(tmp_path, trained):
    """An adapters directory holding a fresh copy of the trained adapter as 'persona'."""
    shutil.copytree(trained[1], tmp_path / "adapters" / "persona")
    return tmp_path / "adapters"


def attach(trained, root, name="persona", loaded=None, allow_pickle=False):
    from adapters.host import AdapterHost
    from adapters.registry import AdapterRegistry

    registry = AdapterRegistry(root, allow_pickle=allow_pickle)
    return AdapterHost(loaded or load_tiny(trained[0]), threading.Lock(), registry).attach(name)


def rewrite_checksums(folder: Path) -> None:
    from adapters.metadata import AdapterMetadata, file_checksums

    meta = AdapterMetadata.read(folder)
    meta.checksums = file_checksums(folder)
    meta.write(folder)


def test_lists_adapters_with_metadata_and_skips_hidden_folders(trained, root):
    from adapters.registry import AdapterRegistry

    (root / ".partial-persona-x").mkdir()
    shutil.copytree(root / "persona", root / "second")
    (root / "second" / "adapter_metadata.json").unlink()
    rows = [info.summary() for info in AdapterRegistry(root).list()]
    assert [row["name"] for row in rows] == ["persona", "second"]
    assert rows[0]["base_model"] == trained[0] and rows[0]["steps"] == 2 and rows[0]["problem"] is None
    assert "no adapter_metadata.json" in rows[1]["problem"]


def test_listing_flags_what_would_fail_to_load_and_offers_only_the_rest(trained, root):
    from safetensors.torch import load_file, save_file

    from adapters.registry import AdapterRegistry

    for name in ("base", "tampered", "pickled"):
        shutil.copytree(root / "persona", root / name)
    weights = load_file(root / "tampered" / "adapter_model.safetensors")
    save_file({key: value + 1 for key, value in weights.items()}, root / "tampered" / "adapter_model.safetensors")
    torch.save(weights, root / "pickled" / "adapter_model.bin")
    (root / "pickled" / "adapter_model.safetensors").unlink()
    rewrite_checksums(root / "pickled")
    problems = {info.name: info.problem for info in AdapterRegistry(root).list()}
    assert problems["persona"] is None
    assert "reserved for the base model" in problems["base"]
    assert "checksum mismatch" in problems["tampered"]
    assert "pickle weights" in problems["pickled"]
    assert AdapterRegistry(root).names() == ["persona"]
    assert AdapterRegistry(root, allow_pickle=True).names() == ["persona", "pickled"]
    with pytest.raises(ValueError, match="checksum mismatch"):  # loading refuses what the listing flagged
        attach(trained, root, name="tampered")


def test_list_cli_refuses_a_missing_directory(tmp_path):
    done = subprocess.run([sys.executable, "-m", "adapters", "list", "--dir", str(tmp_path / "nowhere")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "adapters directory" in done.stderr and "does not exist" in done.stderr


def test_cli_adapter_path_that_does_not_exist_is_named_as_a_path(trained, tmp_path):
    from adapters.host import attach_for_cli

    for text in (str(tmp_path / "nope"), "./nope", "../nope", "~/nope"):
        with pytest.raises(ValueError, match=r"adapter folder '.*nope' does not exist"):
            attach_for_cli(load_tiny(trained[0]), text, threading.Lock())


def test_empty_or_missing_directory_lists_nothing(tmp_path):
    from adapters.registry import AdapterRegistry

    assert AdapterRegistry(tmp_path / "nowhere").list() == []


def test_default_directory_comes_from_bot_paths(data_home):
    from adapters.registry import AdapterRegistry
    from bot.paths import adapters_dir

    assert AdapterRegistry().root == adapters_dir()


def test_a_valid_adapter_attaches(trained, root):
    assert attach(trained, root) == "persona"


def test_wrong_base_name_is_refused_naming_both(trained, root, tmp_path):
    other = tiny_base(tmp_path / "other-base", seed=1)
    with pytest.raises(ValueError, match=f"trained on base model '{trained[0]}', but the loaded model is '{other}'"):
        attach(trained, root, loaded=load_tiny(other))


def test_same_name_other_weights_is_refused(trained, root, tmp_path):
    impostor = load_tiny(tiny_base(tmp_path / "impostor", seed=1))
    impostor.name = trained[0]
    with pytest.raises(ValueError, match="trained on other weights"):
        attach(trained, root, loaded=impostor)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_the_base_loaded_in_another_dtype_takes_its_adapters(trained, root, dtype):
    """In fp16 (what `--dtype auto` picks on a GPU without bf16) every adapter was refused as trained
    on other weights: fp32 to fp16 to bf16 rounds differently from fp32 to bf16, so the fingerprint
    differs, and the recorded sample of the weights now settles it."""
    from adapters.metadata import AdapterMetadata, weights_fingerprint
    from bot.models import load_model

    loaded = load_model(trained[0], dtype=dtype, device="cpu")
    recorded = AdapterMetadata.read(root / "persona")
    if dtype == "float16":
        assert weights_fingerprint(loaded.model) != recorded.base_fingerprint, "sanity check: the hash alone refuses it"
    assert attach(trained, root, loaded=loaded) == "persona"
    recorded.base_sample = []  # recorded before samples were: the fingerprint alone decides, as it did
    recorded.write(root / "persona")
    if dtype == "float16":
        with pytest.raises(ValueError, match="trained on other weights"):
            attach(trained, root, loaded=load_model(trained[0], dtype=dtype, device="cpu"))


def test_an_adapter_that_recorded_its_base_as_typed_still_loads(trained, root, monkeypatch):
    """Adapters recorded before local models were named by their absolute path hold the path as typed."""
    from adapters.metadata import AdapterMetadata

    monkeypatch.chdir(Path(trained[0]).parent)
    meta = AdapterMetadata.read(root / "persona")
    meta.base_model = f"./{Path(trained[0]).name}/"
    meta.write(root / "persona")
    assert attach(trained, root) == "persona"


def test_a_sample_matches_only_the_weights_it_was_taken_from(tmp_path):
    """Within the rounding of a dtype; another model of the same shape differs everywhere."""
    import torch

    from adapters.metadata import same_weights, weights_sample

    first, second = (load_tiny(tiny_base(tmp_path / f"base-{seed}", seed=seed)).model for seed in (0, 1))
    sample = weights_sample(first)
    assert len(sample) == 256 and same_weights(sample, weights_sample(first.to(torch.float16)))
    assert not same_weights(sample, weights_sample(second))
    assert not same_weights(sample, [value * 1.05 for value in sample])  # 5% off: not rounding
    assert not same_weights([], sample)

    class Large(torch.nn.Module):  # SmolLM2's vocabulary x width: float32 positions overshot its last value
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(49152, 576)

        def get_input_embeddings(self):
            return self.embed

    large = Large()
    ends = large.embed.weight.reshape(-1)[[0, -1]].tolist()
    assert [weights_sample(large)[i] for i in (0, -1)] == [float(f"{value:.6g}") for value in ends]


def test_pickle_weights_are_refused_unless_opted_in(trained, root):
    import torch
    from safetensors.torch import load_file

    folder = root / "persona"
    torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    rewrite_checksums(folder)
    with pytest.raises(ValueError, match="pickle weights"):
        attach(trained, root)
    assert attach(trained, root, allow_pickle=True) == "persona"


@pytest.mark.parametrize("name", ["../persona", "..", "/etc/passwd", ".hidden", "a\\b", "x y", "a/../../b", "base"])
def test_unsafe_or_reserved_names_are_refused(trained, root, name):
    with pytest.raises(ValueError, match="is not a valid adapter name|is reserved: it means the base|hub cannot be reached"):
        attach(trained, root, name=name)


def test_symlink_leading_outside_the_directory_is_refused(trained, root, tmp_path):
    shutil.copytree(root / "persona", tmp_path / "elsewhere")
    (root / "escape").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="leads outside the adapters directory"):
        attach(trained, root, name="escape")


def test_symlinked_weight_file_leading_outside_is_refused(trained, root, tmp_path):
    weights = root / "persona" / "adapter_model.safetensors"
    shutil.move(weights, tmp_path / "stolen.safetensors")
    weights.symlink_to(tmp_path / "stolen.safetensors")
    with pytest.raises(ValueError, match="leads outside"):
        attach(trained, root)


def test_unknown_name_says_what_exists(trained, root):
    with pytest.raises(ValueError, match="unknown adapter 'nope'; available: persona"):
        attach(trained, root, name="nope")


def test_hub_id_offline_is_a_clear_error(trained, root):
    with pytest.raises(ValueError, match="hub id, but the Hugging Face hub cannot be reached .* no copy of it"):
        attach(trained, root, name="someone/some-adapter")


@pytest.mark.parametrize(
    ("missing", "message"),
    [("adapter_config.json", "missing adapter_config.json"), ("adapter_model.safetensors", "missing its weights"),
     ("adapter_metadata.json", "cannot be verified: .* no adapter_metadata.json")],
)
def test_missing_files_are_refused(trained, root, missing, message):
    (root / "persona" / missing).unlink()
    with pytest.raises(ValueError, match=message):
        attach(trained, root)


def test_checksum_mismatch_is_refused(trained, root):
    with (root / "persona" / "adapter_model.safetensors").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="checksum mismatch for adapter_model.safetensors"):
        attach(trained, root)


def test_a_changed_adapter_config_is_refused_and_an_older_adapter_without_its_checksum_loads(trained, root):
    """lora_alpha scales what the weights do: a copy with it raised 1000-fold loaded and answered
    differently, though the README promised that tampered files are refused."""
    from adapters.metadata import AdapterMetadata

    folder = root / "persona"
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": config["lora_alpha"] * 1000}))
    with pytest.raises(ValueError, match="checksum mismatch for adapter_config.json of adapter 'persona'"):
        attach(trained, root)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    meta = AdapterMetadata.read(folder)
    assert "adapter_config.json" in meta.checksums
    del meta.checksums["adapter_config.json"]  # as adapters trained before 2026-11-28 were written
    meta.write(folder)
    assert attach(trained, root) == "persona"


def test_target_module_missing_from_base_is_refused(trained, root):
    from safetensors.torch import load_file, save_file

    weights = root / "persona" / "adapter_model.safetensors"
    tensors = {key.replace("layers.1.", "layers.7."): value for key, value in load_file(weights).items()}
    save_file(tensors, weights)
    rewrite_checksums(root / "persona")
    with pytest.raises(ValueError, match="targets module 'model.layers.7.* which the base model does not have"):
        attach(trained, root)


def test_rank_inconsistent_with_config_is_refused(trained, root):
    config_path = root / "persona" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["r"] = 8
    config_path.write_text(json.dumps(config))
    rewrite_checksums(root / "persona")  # as a hand-made adapter might be recorded
    with pytest.raises(ValueError, match="has rank 4, but adapter_config.json says r=8"):
        attach(trained, root)


def test_wrong_shape_is_refused(trained, root):
    import torch
    from safetensors.torch import load_file, save_file

    weights = root / "persona" / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if "q_proj.lora_A" in k)
    tensors[key] = torch.zeros(4, 7)
    save_file(tensors, weights)
    rewrite_checksums(root / "persona")
    with pytest.raises(ValueError, match=r"has shape \[4, 7\], the base layer needs \[4, 32\]"):
        attach(trained, root)


def test_list_cli_prints_json(root):
    done = subprocess.run([sys.executable, "-m", "adapters", "list", "--json", "--dir", str(root)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [row["name"] for row in json.loads(done.stdout)] == ["persona"]
    table = subprocess.run([sys.executable, "-m", "adapters", "list", "--dir", str(root)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert table.stdout.startswith("persona") and "steps=2" in table.stdout and table.stderr == ""


def test_an_adapter_published_from_a_nan_run_is_flagged_and_refused(trained, root):
    """Older versions published such runs: `list --json` printed a bare NaN (not JSON), and the adapter
    was offered and answered with empty strings."""
    from adapters.metadata import AdapterMetadata
    from adapters.registry import AdapterRegistry

    shutil.copytree(root / "persona", root / "diverged")
    meta = AdapterMetadata.read(root / "diverged")
    meta.final_loss = float("nan")
    meta.write(root / "diverged")
    done = subprocess.run([sys.executable, "-m", "adapters", "list", "--json", "--dir", str(root)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)

    def strict(constant):
        raise AssertionError(f"{constant} is not JSON")

    rows = {row["name"]: row for row in json.loads(done.stdout, parse_constant=strict)}
    assert rows["diverged"]["final_loss"] is None
    assert rows["diverged"]["problem"] == "adapter 'diverged' diverged in training (final_loss nan); train it again"
    assert AdapterRegistry(root).names() == ["persona"]
    with pytest.raises(ValueError, match="adapter 'diverged' diverged in training"):
        attach(trained, root, name="diverged")


def test_list_says_what_it_passes_over(root):
    """A folder with an adapter under a name that cannot name one, and an interrupted run's checkpoint,
    are said on stderr; a hidden folder of another kind and a run folder without a checkpoint are not."""
    shutil.copytree(root / "persona", root / "kelp.v2")
    (root / ".long.run" / "step-000040").mkdir(parents=True)
    (root / ".done.run").mkdir()
    (root / ".partial-x").mkdir()
    shutil.copytree(root / "persona", root / ".partial-y")  # a publish in progress: not the user's to rename
    done = subprocess.run([sys.executable, "-m", "adapters", "list", "--json", "--dir", str(root)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert [row["name"] for row in json.loads(done.stdout)] == ["persona"]
    assert done.stderr.splitlines() == [
        "not listed: .long.run: an interrupted training run, checkpoint at step 40 (--resume continues it, --restart "
        "discards it)",
        "not listed: kelp.v2: holds an adapter, but its name cannot name one (letters, digits, '-' and '_'); rename "
        "the folder",
    ]


@pytest.mark.parametrize("impostor", [False, True])
def test_an_adapter_for_another_base_is_not_offered_and_a_request_says_why(trained, root, tmp_path, impostor):
    """It used to be listed (in /v1/models with this model as its parent) and fail on every use."""
    from adapters.host import AdapterHost
    from adapters.registry import AdapterRegistry
    from bot.api import _adapter_for, APIError
    from bot.generation import Generator
    from bot.service import ChatService

    other = load_tiny(tiny_base(tmp_path / "other-base", seed=1))
    if impostor:  # the same name, other weights
        other.name = trained[0]
    shutil.copytree(trained[1], root / "zebra")
    lock = threading.Lock()
    service = ChatService(Generator(other), adapters=AdapterHost(other, lock, AdapterRegistry(root)))
    assert service.adapter_choices() == ["base"]
    with pytest.raises(APIError, match="trained on other weights" if impostor else "trained on base model") as caught:
        _adapter_for(service, "zebra")
    assert caught.value.status == 400
    with pytest.raises(APIError, match="unknown model 'nobody'"):
        _adapter_for(service, "nobody")
    if not impostor:  # the page's API says why too; Gradio said only "not in the list of choices"
        from servers import gradio_client, launched

        with launched(service) as url:
            client = gradio_client(url)
            for ask in (lambda: client.predict("hi", "", 4, 0, 1, "zebra", "(none)", "few", 2, "knn", "nearest-last", 0,
                                               api_name="/chat"),
                        lambda: client.predict("hi", ["base", "zebra"], False, "(none)", "few", 2, "knn",
                                               "nearest-last", 4, 0, 0, api_name="/compare")):
                with pytest.raises(Exception, match=f"adapter 'zebra' was trained on base model '{trained[0]}'"):
                    ask()
            with pytest.raises(Exception, match="not in the list of choices"):  # a name with no folder at all
                client.predict("hi", "", 4, 0, 1, "nobody", "(none)", "few", 2, "knn", "nearest-last", 0,
                               api_name="/chat")
    fitting = ChatService(Generator(load_tiny(trained[0])),
                          adapters=AdapterHost(load_tiny(trained[0]), lock, AdapterRegistry(root)))
    assert fitting.adapter_choices() == ["base", "persona", "zebra"]


def test_an_empty_adapter_name_is_named_as_such(trained, root):
    """It used to be read as the current folder ("'.venv' leads outside the adapters directory")."""
    from adapters.host import resolve_cli_adapter
    from adapters.registry import AdapterRegistry

    for text in ("", "  "):
        with pytest.raises(ValueError, match="the adapter name is empty; leave out --adapter"):
            resolve_cli_adapter(text, AdapterRegistry(root))
