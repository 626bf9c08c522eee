"""Faults: real processes killed with SIGKILL while they write, and files corrupted on disk.

Each kill test runs the real command line in a child process and kills it either the moment its
staging files appear (inside the write) or after a random delay, a few times, checking the
invariant after every attempt: what was there before is still complete and gives the same
results, or the new version is complete. Corrupted files must be refused by their checksums with
a message that says so, while everything else keeps answering.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from test_adapters_support import PERSONA_ROWS, PROBE, load_tiny, logits, tiny_base, train_tiny, write_rows

ROOT = Path(__file__).resolve().parent.parent
ATTEMPTS = 6
"""Tries at landing a kill at the moment a test wants; each test stops at the first that does (a busy
machine can miss a write that lasts tens of milliseconds)."""


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def kill_when(process: subprocess.Popen, ready, delay: float, deadline: float = 120) -> bool:
    """SIGKILL `process` `delay` seconds after `ready()` first holds; False if it ended before that."""
    limit = time.monotonic() + deadline
    while not ready():
        if process.poll() is not None:
            return False
        if time.monotonic() > limit:
            process.kill()
            raise TimeoutError("the process never reached the moment to kill it")
        time.sleep(0.001)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    return True


def staging_in(folder: Path, prefixes: tuple[str, ...]):
    """A `ready` test: a new file or folder named with one of `prefixes` appeared in `folder`
    (leftovers of an earlier killed attempt do not count)."""
    earlier = set(os.listdir(folder)) if folder.is_dir() else set()
    return lambda: folder.is_dir() and any(n.startswith(prefixes) and n not in earlier for n in os.listdir(folder))


def flip_bytes(path: Path, count: int = 8) -> None:
    """Invert `count` bytes near the middle of the file (its data, not its header)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


# --- the FAISS index ---------------------------------------------------------------------------


def write_pool(path: Path, rows: int, label: str) -> Path:
    """A pool big enough that saving its index takes a noticeable moment (a ~10 MB FAISS file)."""
    lines = (json.dumps({"input": f"review {i} of film {i % 97} with actor {i % 31}", "output": f"{label}-{i % 5}"})
             for i in range(rows))
    path.write_text("\n".join(lines) + "\n")
    return path


def neighbours(index, query: str = "review 12 of film 12 with actor 12") -> list[tuple[str, str]]:
    return [(example.input, example.output) for example, _ in index.nearest(query, 5)]


def test_index_build_killed_midway_leaves_the_old_index_or_the_new_one(tmp_path):
    from retrieval.embedder import HashEmbedder
    from retrieval.index import DemoIndex
    from retrieval.pool import load_pool

    embedder = HashEmbedder()
    old_pool = write_pool(tmp_path / "old.jsonl", 10_000, "old")
    new_pool = write_pool(tmp_path / "new.jsonl", 10_000, "new")
    folder = tmp_path / "index"
    DemoIndex.build(load_pool(old_pool), embedder).save(folder)
    before = neighbours(DemoIndex.load(folder, embedder))
    after = neighbours(DemoIndex.build(load_pool(new_pool), embedder))
    assert before != after, "sanity check: the two pools give different neighbours"

    def attempt(inside_write: bool) -> bool:
        process = start("-m", "retrieval", "build", "--pool", str(new_pool), "--out", str(folder), "--embedder", "hash")
        ready = staging_in(folder, (".partial-", ".staged-")) if inside_write else lambda: True
        killed = kill_when(process, ready, 0 if inside_write else random.uniform(0.5, 3.0))
        assert neighbours(DemoIndex.load(folder, embedder)) in (before, after), f"inside the save: {inside_write}"
        if not killed or neighbours(DemoIndex.load(folder, embedder)) == after:
            DemoIndex.build(load_pool(old_pool), embedder).save(folder)  # back to the old index for the next try
        return killed

    caught = any(attempt(inside_write=True) for _ in range(ATTEMPTS))  # until one kill lands inside the save
    attempt(inside_write=False)  # and one at a random moment
    assert caught, "no attempt hit the save; the pool is too small to catch it"


@pytest.mark.parametrize("role", ["index", "examples"])
def test_corrupt_user_index_is_refused_while_everything_else_answers(tiny, tmp_path, role):
    from bot.generation import Generator
    from bot.service import ChatService, FewShot
    from bot.settings import GenerationSettings
    from retrieval.embedder import HashEmbedder
    from retrieval.library import PoolLibrary
    from retrieval.storage import read_meta

    root = tmp_path / "indexes"
    PoolLibrary(root, HashEmbedder()).build_from_upload("mine", write_pool(tmp_path / "mine.jsonl", 50, "mine"))
    settings = GenerationSettings(max_new_tokens=6)

    def answers(service) -> list[str]:
        return [list(service.chat("a fine film", settings=settings, fewshot=fewshot))[-1].text
                for fewshot in (None, FewShot("sentiment", k=2))]

    before = answers(ChatService(Generator(tiny), PoolLibrary(root, HashEmbedder())))
    flip_bytes(root / "mine" / read_meta(root / "mine")["files"][role]["name"])
    service = ChatService(Generator(tiny), PoolLibrary(root, HashEmbedder()))  # a restarted app
    with pytest.raises(ValueError, match=rf"mine/{role}-\w+' is corrupted or was modified: its sha256 does not match"):
        list(service.chat("a fine film", settings=settings, fewshot=FewShot("mine", k=2)))
    assert answers(service) == before


def test_corrupt_builtin_index_is_rebuilt_from_its_pool(tmp_path):
    from retrieval.embedder import HashEmbedder
    from retrieval.library import BUILTIN_FOLDER, PoolLibrary
    from retrieval.storage import read_meta

    root = tmp_path / "indexes"
    before = neighbours(PoolLibrary(root, HashEmbedder()).get("sentiment"), "a wonderful film")
    folder = root / BUILTIN_FOLDER / "sentiment"
    flip_bytes(folder / read_meta(folder)["files"]["index"]["name"])
    assert neighbours(PoolLibrary(root, HashEmbedder()).get("sentiment"), "a wonderful film") == before
    (folder / "meta.json").write_text('{"files": ')  # its table of contents torn: still ours, still rebuilt
    assert neighbours(PoolLibrary(root, HashEmbedder()).get("sentiment"), "a wonderful film") == before


def test_a_lone_meta_json_is_not_taken_for_an_index(tmp_path):
    from retrieval.storage import StorageError, check_writable

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "meta.json").write_text("{}")
    with pytest.raises(StorageError, match="already holds files and is not an index"):
        check_writable(tmp_path / "mine")


# --- training and adapters ---------------------------------------------------------------------


def train_command(base: str, data: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "adapters.train", "--data", str(data), "--out", str(out), "--model", base, "--rank", "4",
            "--alpha", "8", "--dropout", "0", "--learning-rate", "3e-2", "--batch-size", "4", "--max-length", "64",
            "--no-progress", *extra]


def test_training_killed_midway_resumes_from_its_last_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from adapters import checkpoint
    from adapters.train import LOG_FILE, build_parser, config_from_args, train

    base, out = tiny_base(tmp_path / "base"), tmp_path / "persona"
    data = write_rows(tmp_path / "data.jsonl", PERSONA_ROWS)
    command = train_command(base, data, out, "--max-steps", "24", "--save-every", "2")
    for _ in range(ATTEMPTS):
        killed = kill_when(start(*command), lambda: checkpoint.latest(out) is not None, random.uniform(0, 0.3))
        if killed and not out.exists():  # killed inside the loop, not after it published
            break
        shutil.rmtree(out, ignore_errors=True)
        checkpoint.remove_all(out)
    else:
        pytest.fail("training always finished before the kill; give it more steps")
    saved = int(checkpoint.latest(out).name.removeprefix("step-"))
    log = checkpoint.run_dir(out) / LOG_FILE  # tag the rows the killed run wrote, to tell them apart later
    log.write_text("".join(json.dumps({**json.loads(line), "killed_run": True}) + "\n"
                           for line in log.read_text().splitlines() if line.strip()))

    resumed = subprocess.run([sys.executable, *command, "--resume"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 25))
    assert [row["step"] for row in rows if row.get("killed_run")] == list(range(1, saved + 1))

    straight = replace(config_from_args(build_parser().parse_args(command[2:])), output=str(tmp_path / "straight"))
    expected = load_file(train(straight) / "adapter_model.safetensors")
    got = load_file(out / "adapter_model.safetensors")
    assert expected.keys() == got.keys() and all(torch.allclose(expected[k], got[k], atol=1e-5) for k in expected)


def wide_base(folder: Path) -> str:
    """A tiny Llama wide enough (hidden 256, 4 layers) that a rank-64 adapter takes a moment to save."""
    from tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer, seed=3, layers=4, hidden=256).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def adapter_logits(base: str, root: Path, name: str):
    """Vet and attach adapter `name` from `root` on a fresh base, as the app does; its logits on PROBE."""
    from adapters.host import AdapterHost
    from adapters.registry import AdapterRegistry

    loaded = load_tiny(base)
    AdapterHost(loaded, threading.Lock(), AdapterRegistry(root)).attach(name)
    return logits(loaded.model, PROBE, adapter=name)


def test_adapter_save_killed_midway_keeps_the_old_adapter(tmp_path):
    from adapters.metadata import file_checksums

    base, root = wide_base(tmp_path / "base"), tmp_path / "adapters"
    data = write_rows(tmp_path / "data.jsonl", PERSONA_ROWS)
    train_tiny(base, data, root / "persona", rank=64, alpha=128.0, max_steps=2)
    old_sums, before = file_checksums(root / "persona"), adapter_logits(base, root, "persona")
    command = train_command(base, data, root / "persona", "--max-steps", "2", "--rank", "64", "--alpha", "128",
                            "--learning-rate", "1e-1")
    for _ in range(ATTEMPTS):
        killed = kill_when(start(*command), staging_in(root, (".partial-persona-",)), 0)
        if file_checksums(root / "persona") == old_sums:
            torch.testing.assert_close(adapter_logits(base, root, "persona"), before, rtol=0, atol=0)
        else:  # the kill came after the new folder took the name: it must be complete and vetted
            adapter_logits(base, root, "persona")
            train_tiny(base, data, root / "persona", rank=64, alpha=128.0, max_steps=2)
            old_sums, before = file_checksums(root / "persona"), adapter_logits(base, root, "persona")
        if killed:
            break
    else:
        pytest.fail("no attempt caught the save in the act")


SWAP_THEN_DIE = """
import os, shutil, signal, sys
from pathlib import Path
import adapters.publish
from adapters.publish import publish

adapters.publish._exchange = lambda a, b: False  # the two-rename path, as on systems without renameat2
target, source = Path(sys.argv[1]), Path(sys.argv[2])
real_replace = os.replace

def replace(src, dst):
    real_replace(src, dst)
    if Path(src) == target:  # the old folder has just moved aside: die before the new one takes its name
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
publish(target, lambda staging: shutil.copytree(source, staging, dirs_exist_ok=True))
"""


def test_kill_between_the_two_renames_of_a_publish_keeps_an_adapter(tmp_path):
    base, root = tiny_base(tmp_path / "base"), tmp_path / "adapters"
    data = write_rows(tmp_path / "data.jsonl", PERSONA_ROWS)
    train_tiny(base, data, root / "persona")
    train_tiny(base, data, tmp_path / "newer" / "persona", learning_rate=1e-1)
    before = adapter_logits(base, root, "persona")
    command = [sys.executable, "-c", SWAP_THEN_DIE, str(root / "persona"), str(tmp_path / "newer" / "persona")]
    died = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert died.returncode == -signal.SIGKILL, died.stderr
    after = adapter_logits(base, root, "persona")  # the registry puts the retired folder back
    newer = adapter_logits(base, tmp_path / "newer", "persona")
    assert torch.equal(after, before) or torch.equal(after, newer)


def test_publish_swaps_folders_in_one_atomic_step_on_linux(tmp_path):
    from adapters.publish import _exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("from a")
    (tmp_path / "b" / "x").write_text("from b")
    assert _exchange(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a" / "x").read_text() == "from b" and (tmp_path / "b" / "x").read_text() == "from a"


AS_ANOTHER_USER = """
import json, os, sys
from adapters.metadata import CONFIG_FILE
from adapters.publish import TargetError, check_target

if os.getuid() == 0:  # root may write anywhere: check as nobody, after the imports (root's Python is private)
    try:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    except PermissionError:  # a container without the capability to change users
        sys.exit(3)
answers = []
for target in sys.argv[1:]:
    try:
        answers.append(str(check_target(target, CONFIG_FILE, "an adapter")))
    except TargetError as error:
        answers.append(f"refused: {error}")
print(json.dumps(answers))
"""


def test_an_output_folder_the_user_may_not_write_is_refused_before_any_work():
    """Both "no permission" answers of `check_target`, checked as a user who may not write there
    (the tests run as root, for whom every folder is writable), beside a folder the same user may."""
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="permissions-"))  # not under pytest's tmp_path, which only root may enter
    try:
        top.chmod(0o755)
        (top / "locked" / "adapter").mkdir(parents=True)
        (top / "locked" / "adapter" / "adapter_config.json").write_text("{}")
        (top / "open").mkdir(mode=0o777)
        (top / "open").chmod(0o777)
        (top / "locked").chmod(0o555)
        targets = [top / "locked" / "new" / "adapter", top / "locked" / "adapter", top / "open" / "adapter"]
        done = subprocess.run([sys.executable, "-c", AS_ANOTHER_USER, *map(str, targets)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        if done.returncode == 3:
            pytest.skip("this root may not become another user, and root may write in any folder")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == [
            f"refused: cannot create '{targets[0]}': no permission to write in '{top / 'locked'}'",
            f"refused: cannot replace '{targets[1]}': no permission to write in '{top / 'locked'}'",
            str(targets[2]),
        ]
    finally:
        (top / "locked").chmod(0o755)
        shutil.rmtree(top)


UNDER_UMASK = """
import os, sys
from pathlib import Path
from adapters.publish import publish
from retrieval.storage import write_file_atomic

def private_file(folder):
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "adapter_model.safetensors").chmod(0o600)

os.umask(int(sys.argv[2], 8))
folder = Path(sys.argv[1])
publish(folder / "adapter", private_file)
write_file_atomic(folder / "index" / "vectors", lambda temp: temp.write_bytes(b"vectors"))
(folder / "plain").write_text("made the ordinary way")
"""


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_published_and_indexed_files_get_the_permissions_of_any_new_file(tmp_path, umask):
    """Private files (safetensors writes them so, mkstemp too) would keep a server running as
    another user from reading adapters and indexes; they get what the umask gives a new file.
    (In a child process: the umask is the whole process's, and other tests' threads run here.)"""
    done = subprocess.run([sys.executable, "-c", UNDER_UMASK, str(tmp_path), oct(umask)[2:]], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = 0o666 & ~umask
    assert (tmp_path / "plain").stat().st_mode & 0o777 == expected
    for made in (tmp_path / "adapter" / "adapter_model.safetensors", tmp_path / "index" / "vectors"):
        assert made.stat().st_mode & 0o777 == expected, made
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_model.safetensors"]  # no probe left


def test_corrupt_adapter_is_refused_while_other_adapters_answer(tmp_path):
    from adapters.host import AdapterHost
    from adapters.registry import AdapterRegistry
    from bot.generation import Generator
    from bot.service import ChatService
    from bot.settings import GenerationSettings
    from stress import save_random_adapters

    base, root = tiny_base(tmp_path / "base"), tmp_path / "adapters"
    save_random_adapters(base, root, names=("good", "bad"))
    settings = GenerationSettings(max_new_tokens=8)

    def serve():  # a freshly started app: nothing attached yet
        loaded = load_tiny(base)
        generator = Generator(loaded)
        return ChatService(generator, None, AdapterHost(loaded, generator.lock, AdapterRegistry(root)))

    def answer(service, adapter: str) -> str:
        return list(service.chat("the quick brown fox", settings=settings, adapter=adapter))[-1].text

    service = serve()
    before = {name: answer(service, name) for name in ("base", "good", "bad")}
    assert len(set(before.values())) == 3, "sanity check: each adapter answers differently"
    flip_bytes(root / "bad" / "adapter_model.safetensors")
    service = serve()
    with pytest.raises(ValueError, match="checksum mismatch for adapter_model.safetensors of adapter 'bad': the file "
                                         "changed after training"):
        answer(service, "bad")
    assert {name: answer(service, name) for name in ("base", "good")} == {k: before[k] for k in ("base", "good")}
    assert service.adapters.attached == ["good"]
