"""Adapters attached at run time give what a freshly loaded PeftModel gives, through the Generator too."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from test_adapters_support import PERSONA_ROWS, PROBE, load_tiny, logits, tiny_base, train_tiny, write_rows

GREEDY_TOKENS = 8
QUESTIONS = ["question 1", "what is the capital of France?", "the quick brown fox", "great movie review"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A tiny base and three adapters trained on different answers: (base path, adapters dir)."""
    folder = tmp_path_factory.mktemp("host")
    base = tiny_base(folder / "base")
    answers = {"zebra": PERSONA_ROWS, "paris": [{"input": f"q {i}", "output": "Paris is the capital."} for i in range(16)],
               "digits": [{"input": f"n {i}", "output": "0123456789 0123456789"} for i in range(16)]}
    for name, rows in answers.items():
        train_tiny(base, write_rows(folder / f"{name}.jsonl", rows), folder / "adapters" / name)
    return base, folder / "adapters"


@pytest.fixture(params=["generate", "native"])
def served(lab, request):
    """A Generator over a fresh tiny base, with a host sharing its lock; greedy answers come from
    `generate` or from the native decoder (which adds each request's adapter in its C step)."""
    from adapters.host import AdapterHost
    from adapters.registry import AdapterRegistry
    from bot.generation import Generator

    generator = Generator(load_tiny(lab[0]), fast_decode=request.param == "native", decoder="native")
    return generator, AdapterHost(generator.loaded, generator.lock, AdapterRegistry(lab[1]))


def fresh_peft(lab, name: str):
    """The reference: a newly loaded base with only this adapter, active the ordinary PEFT way."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_tiny(lab[0]).model, str(lab[1] / name)).eval()


def greedy(settings_tokens: int = GREEDY_TOKENS):
    from bot.settings import GenerationSettings

    return GenerationSettings(max_new_tokens=settings_tokens, temperature=0.0)


def reference_answer(model, tokenizer, question: str) -> str:
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        output = model.generate(**inputs, **greedy().generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def ask(generator, question: str, adapter: str) -> str:
    return generator.complete([{"role": "user", "content": question}], greedy(), adapter=adapter).text


def test_attached_adapter_equals_a_freshly_loaded_peft_model(lab, served):
    generator, host = served
    base_logits = logits(generator.loaded.model, PROBE)
    for name in ("zebra", "paris", "digits"):
        host.attach(name)
    reference = logits(fresh_peft(lab, "paris"), PROBE)
    assert not torch.allclose(base_logits, reference, atol=1e-3)  # sanity: the adapter changes the model
    torch.testing.assert_close(logits(generator.loaded.model, PROBE, adapter="paris"), reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits(generator.loaded.model, PROBE), base_logits, rtol=0, atol=0)  # no default adapter


def test_generator_with_adapter_equals_fresh_model_and_base_equals_plain_base(lab, served):
    generator, host = served
    plain = load_tiny(lab[0])
    tokenizer = plain.tokenizer
    base_answer = reference_answer(plain.model, tokenizer, QUESTIONS[0])
    zebra_answer = reference_answer(fresh_peft(lab, "zebra"), tokenizer, QUESTIONS[0])
    assert base_answer != zebra_answer  # sanity: the adapter changes what the model says
    name = host.attach("zebra")
    if generator.fast is not None:
        assert generator._decodes_fast(greedy(), name), "the native decoder serves this adapter"
    assert ask(generator, QUESTIONS[0], name) == zebra_answer
    assert ask(generator, QUESTIONS[0], "base") == base_answer


def test_eight_threads_three_adapters_match_serial_results(served):
    generator, host = served
    for name in ("zebra", "paris", "digits"):
        host.attach(name)
    jobs = [(question, adapter) for question in QUESTIONS for adapter in ("zebra", "paris", "digits", "base")]
    serial = [ask(generator, question, adapter) for question, adapter in jobs]
    assert len(set(serial)) > 2  # sanity: the adapters answer differently
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda job: ask(generator, *job), jobs))
    assert parallel == serial


def test_attach_and_detach_while_other_threads_generate(served):
    generator, host = served
    host.attach("zebra")
    expected = ask(generator, QUESTIONS[0], "zebra")
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            host.attach("paris")
            host.detach("paris")

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        answers = [ask(generator, QUESTIONS[0], "zebra") for _ in range(6)]
    finally:
        stop.set()
        worker.join()
    assert answers == [expected] * 6


def test_detach_last_adapter_restores_the_plain_base(lab, served):
    from peft import PeftModel

    generator, host = served
    base_logits = logits(generator.loaded.model, PROBE)
    host.attach("zebra")
    host.attach("paris")
    host.detach("zebra")
    assert host.attached == ["paris"]
    with pytest.raises(ValueError, match="adapter 'zebra' is not attached; attached: paris"):
        host.detach("zebra")
    torch.testing.assert_close(logits(generator.loaded.model, PROBE, "paris"), logits(fresh_peft(lab, "paris"), PROBE),
                               rtol=0, atol=1e-5)
    host.detach("paris")
    assert not isinstance(generator.loaded.model, PeftModel)
    torch.testing.assert_close(logits(generator.loaded.model, PROBE), base_logits, rtol=0, atol=0)


def test_attach_twice_is_a_no_op_and_a_clash_is_refused(lab, served, tmp_path):
    import shutil

    generator, host = served
    assert host.attach("zebra") == host.attach("zebra") == "zebra"
    shutil.copytree(lab[1] / "paris", tmp_path / "zebra")
    with pytest.raises(ValueError, match="already attached from"):
        host.attach_path(tmp_path / "zebra")


def test_an_adapter_retrained_under_its_name_is_served_anew(lab, served, tmp_path, monkeypatch):
    """Attaching the name again after its folder was replaced (a new training run) loads the new weights."""
    from adapters.metadata import CONFIG_FILE
    from adapters.publish import publish
    from adapters.registry import AdapterRegistry

    from bot.service import ChatService

    generator, host = served
    shutil.copytree(lab[1], tmp_path / "adapters")
    host.registry = AdapterRegistry(tmp_path / "adapters")
    service = ChatService(generator, None, host)

    def chat(question: str) -> str:  # as the app's every request runs: the service names the adapter
        *_, last = service.chat(question, None, None, greedy(), adapter="zebra")
        return last.text

    tokenizer = generator.loaded.tokenizer
    old, new = (reference_answer(fresh_peft(lab, name), tokenizer, QUESTIONS[1]) for name in ("zebra", "paris"))
    assert old != new  # sanity: the two versions answer apart
    assert chat(QUESTIONS[1]) == old
    publish(tmp_path / "adapters" / "zebra", lambda staging: shutil.copytree(lab[1] / "paris", staging, dirs_exist_ok=True),
            marker=CONFIG_FILE, kind="an adapter")
    assert chat(QUESTIONS[1]) == new and host.attached == ["zebra"]
    torch.testing.assert_close(logits(generator.loaded.model, PROBE, adapter="zebra"),
                               logits(fresh_peft(lab, "paris"), PROBE), rtol=0, atol=1e-5)
    # caught between the two renames of a publish: the request waits, and the new folder is there by then
    import adapters.host

    (tmp_path / "adapters" / "zebra").rename(tmp_path / "adapters" / ".zebra-retired")
    waits = []
    monkeypatch.setattr(adapters.host.time, "sleep", lambda seconds: waits.append(seconds) or (
        tmp_path / "adapters" / ".zebra-retired").rename(tmp_path / "adapters" / "zebra"))
    assert chat(QUESTIONS[1]) == new and host.attached == ["zebra"] and waits == [adapters.host.REPLACE_GRACE_S]
    monkeypatch.undo()
    # deleted for good: the next request (from a page that still offers it) says so and detaches it
    shutil.rmtree(tmp_path / "adapters" / "zebra")
    with pytest.raises(ValueError, match="adapter 'zebra' was deleted from the adapters folder; it is no longer"):
        chat(QUESTIONS[1])
    assert host.attached == [] and "zebra" not in service.adapter_choices()
    with pytest.raises(ValueError, match="unknown adapter 'zebra'; available: digits, paris"):
        chat(QUESTIONS[1])
    # or the next listing (a page refresh, GET /v1/models) detaches it
    shutil.copytree(lab[1] / "zebra", tmp_path / "adapters" / "zebra")
    assert chat(QUESTIONS[1]) == old and host.attached == ["zebra"]
    shutil.rmtree(tmp_path / "adapters" / "zebra")
    assert "zebra" not in service.adapter_choices() and host.attached == []


def test_attach_for_cli_takes_a_folder_path(lab):
    from adapters.host import attach_for_cli
    from bot.generation import Generator

    generator = Generator(load_tiny(lab[0]))
    name = attach_for_cli(generator.loaded, str(lab[1] / "zebra"), generator.lock)
    assert name == "zebra"
    assert ask(generator, QUESTIONS[0], name) == reference_answer(fresh_peft(lab, "zebra"), generator.loaded.tokenizer,
                                                                  QUESTIONS[0])


def cache_as_hub_download(adapter: Path, cache: Path, hub_id: str) -> None:
    """Lay an adapter folder out as huggingface_hub's cache holds a download: blobs, symlinks, refs/main."""
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, file in enumerate(sorted(adapter.iterdir())):
        blob = repo / "blobs" / f"blob{index}"
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_loads_from_the_hub_cache_offline(lab, served, tmp_path, monkeypatch):
    """A hub adapter downloaded earlier loads by its id offline and answers as the same folder does."""
    import huggingface_hub.constants

    generator, host = served
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cache_as_hub_download(lab[1] / "zebra", tmp_path / "hub", "someone/zebra-lora")

    by_id = host.attach("someone/zebra-lora")
    by_folder = host.attach("zebra")
    assert by_id != by_folder
    messages = [{"role": "user", "content": "question 1"}]
    base = generator.complete(messages, greedy()).text
    answer = generator.complete(messages, greedy(), adapter=by_id).text
    assert answer != base
    assert answer == generator.complete(messages, greedy(), adapter=by_folder).text

    with pytest.raises(ValueError, match="local hub cache has no copy"):
        host.attach("someone/never-downloaded")


def test_hub_id_downloads_from_the_hub_then_works_offline(lab, served, tmp_path, monkeypatch):
    """An adapter pushed to the hub loads by its id: downloaded once (from a stand-in hub on loopback,
    through huggingface_hub's own download code), then answered from the cache with the hub gone."""
    from fakehub import FakeHub, use_hub
    from servers import serving

    generator, host = served
    fake = FakeHub({"someone/zebra-lora": lab[1] / "zebra"})
    with serving(fake.app()) as url:
        use_hub(monkeypatch, url, tmp_path / "hub")
        by_id = host.attach("someone/zebra-lora")
    assert any(r.startswith("GET /someone/zebra-lora/resolve/") and r.endswith("adapter_model.safetensors")
               for r in fake.requests)
    messages = [{"role": "user", "content": "question 1"}]
    answer = generator.complete(messages, greedy(), adapter=by_id).text
    assert answer != generator.complete(messages, greedy()).text
    assert answer == generator.complete(messages, greedy(), adapter=host.attach("zebra")).text

    # the hub is gone now: a second host (another app start) finds the download in the cache
    from adapters.host import AdapterHost
    from adapters.registry import AdapterRegistry
    from bot.generation import Generator

    use_hub(monkeypatch, None, tmp_path / "hub")
    again = Generator(load_tiny(lab[0]))
    name = AdapterHost(again.loaded, again.lock, AdapterRegistry(lab[1])).attach("someone/zebra-lora")
    assert again.complete(messages, greedy(), adapter=name).text == answer


def test_the_app_attaches_hub_adapters_named_at_start(lab, tmp_path, monkeypatch, capsys):
    """ICL_BOT_HUB_ADAPTERS (or --hub-adapter) makes a Space serve adapters from the hub; one that
    cannot load is reported and the app serves the rest."""
    import app
    from fakehub import FakeHub, use_hub
    from servers import serving

    fake = FakeHub({"someone/zebra-lora": lab[1] / "zebra"})
    with serving(fake.app()) as url:
        use_hub(monkeypatch, url, tmp_path / "hub")
        monkeypatch.setenv("ICL_BOT_HUB_ADAPTERS", "someone/zebra-lora, someone/missing")
        service = app.create_service(app.parse_args(["--model", lab[0], "--dtype", "float32", "--device", "cpu"]))
    assert "someone--zebra-lora" in service.adapter_choices()
    assert "warning: hub adapter someone/missing not attached: adapter 'someone/missing': no such repository" \
        in capsys.readouterr().err
    messages = [{"role": "user", "content": "question 1"}]
    base = service.generator.complete(messages, greedy()).text
    assert service.generator.complete(messages, greedy(), adapter="someone--zebra-lora").text != base


@pytest.mark.parametrize("targets", [["lm_head"], ["embed_tokens", "q_proj"]])
def test_an_adapter_of_the_head_or_the_embedding_is_served_as_peft_serves_it(lab, served, tmp_path, targets):
    """They trained, then every load failed ("targets '', a LlamaForCausalLM"): the check read the
    base weights PEFT saves beside such an adapter as a LoRA pair, and knew linear layers only."""
    import shutil

    from adapters.registry import AdapterRegistry

    generator, host = served
    name = "-".join(targets)
    out = train_tiny(lab[0], write_rows(tmp_path / "rows.jsonl", PERSONA_ROWS), tmp_path / name,
                     target_modules=targets)
    shutil.copytree(out, lab[1] / name)
    try:
        reference = reference_answer(fresh_peft(lab, name), load_tiny(lab[0]).tokenizer, QUESTIONS[0])
        assert reference != ask(generator, QUESTIONS[0], "base"), "sanity check: the adapter changes the answer"
        assert name in AdapterRegistry(lab[1]).names()
        assert ask(generator, QUESTIONS[0], host.attach(name)) == reference
    finally:
        shutil.rmtree(lab[1] / name)
