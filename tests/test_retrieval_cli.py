"""`python -m retrieval` end to end, `python -m bench` dispatch, and the PoolLibrary the app uses."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.cli import run as cli
from retrieval.embedder import HashEmbedder
from retrieval.index import DemoIndex
from retrieval.library import LibraryError, PoolLibrary, check_name
from retrieval.pool import load_pool
from retrieval.rows import MAX_RECORD_CHARS
from retrieval.storage import StorageError

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_build_then_search_json(tmp_path):
    pool = tmp_path / "reviews.csv"
    pool.write_text("text,label\nloved every minute,pos\nhated the ending,neg\nloved the music,pos\n", encoding="utf-8")
    built = run("retrieval", "build", "--pool", str(pool), "--out", str(tmp_path / "idx"),
                "--input-field", "text", "--output-field", "label", "--embedder", "hash")
    assert built.returncode == 0, built.stderr
    assert "indexed 3 examples with hash-256 (exact)" in built.stdout
    found = run("retrieval", "search", "--index", str(tmp_path / "idx"), "--query", "loved it", "-k", "2",
                "--json", "--embedder", "hash")
    assert found.returncode == 0, found.stderr
    rows = json.loads(found.stdout)
    assert [set(row) for row in rows] == [{"id", "input", "output", "score"}] * 2
    assert rows[0]["score"] >= rows[1]["score"] and rows[0]["input"].startswith("loved")


@pytest.mark.parametrize("args, message", [
    (["search", "--index", "x", "--query", "q", "-k", "0"], "argument -k: must be at least 1, got 0"),
    (["build", "--pool", "p.jsonl"], "the following arguments are required: --out"),
])
def test_bad_flags_end_with_one_line(args, message):
    result = run("retrieval", *args)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_bad_pool_is_one_line_error(tmp_path):
    pool = tmp_path / "p.jsonl"
    pool.write_text('{"input": "a"}\n', encoding="utf-8")
    result = run("retrieval", "build", "--pool", str(pool), "--out", str(tmp_path / "i"), "--embedder", "hash")
    assert result.returncode == 2
    assert result.stderr == "error: p.jsonl: 1 bad row: line 1: missing field 'output'; pass --skip-bad to leave them out\n"


def test_bench_dispatcher_names_what_exists():
    result = run("bench", "nosuch")
    assert result.returncode == 2 and "unknown benchmark 'nosuch'; available: " in result.stderr
    assert "retrieval" in result.stderr.split("available: ")[1]


@pytest.mark.parametrize("name", ["../etc", "/abs", "a/b", ".hidden", "", "builtin", "x" * 65, "a\\b"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(LibraryError, match="invalid index name"):
        check_name(name)


def test_library_builds_lists_and_caches(tmp_path):
    library = PoolLibrary(root=tmp_path / "indexes", embedder=HashEmbedder())
    upload = tmp_path / "upload.jsonl"
    upload.write_text('{"input": "红色的苹果", "output": "水果"}\n{"input": "蓝色的汽车", "output": "车"}\n', encoding="utf-8")
    calls = []
    built = library.build_from_upload("mine", upload, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (2, 2)
    assert library.names()["mine"] == "user" and library.names()["sentiment"] == "built-in"
    assert library.get("mine") is built
    fresh = PoolLibrary(root=tmp_path / "indexes", embedder=HashEmbedder())
    assert fresh.get("mine").pool.examples == built.pool.examples
    with pytest.raises(LibraryError, match="unknown index 'other'; available: .*mine"):
        fresh.get("other")


def test_library_builds_a_builtin_index_once(tmp_path):
    library = PoolLibrary(root=tmp_path, embedder=HashEmbedder())
    index = library.get("sentiment")
    assert (tmp_path / "builtin" / "sentiment" / "meta.json").is_file()
    assert PoolLibrary(root=tmp_path, embedder=HashEmbedder()).get("sentiment").pool.sha256 == index.pool.sha256


def test_library_refuses_large_uploads_and_builtin_names(tmp_path):
    library = PoolLibrary(root=tmp_path, embedder=HashEmbedder(), max_upload_bytes=10)
    upload = tmp_path / "u.jsonl"
    upload.write_text('{"input": "a long enough line", "output": "b"}\n', encoding="utf-8")
    with pytest.raises(LibraryError, match="the limit is"):
        library.build_from_upload("mine", upload)
    with pytest.raises(LibraryError, match="'sentiment' is a built-in pool"):
        library.build_from_upload("sentiment", upload)


def write_pool(path: Path, *rows: tuple[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = rows or (("good film", "pos"), ("bad film", "neg"))
    path.write_text("".join(json.dumps({"input": i, "output": o}) + "\n" for i, o in rows), encoding="utf-8")
    return path


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("out, message", [
    ("", "--out is empty; name the folder to write the index into"),
    (".", "'.' already holds files and is not an index, so writing there would delete them; "
          "choose a new folder (or empty that one yourself)"),
    ("notes", "'notes' already holds files and is not an index"),
    ("../data", "--out '../data' holds the pool file '../data/p.jsonl'; write the index into another folder"),
    ("..", "--out '..' holds the pool file '../data/p.jsonl'"),
    ("notes/todo.txt", "'notes/todo.txt' is a file, not a folder; choose a folder to save into"),
    ("notes/todo.txt/idx", "cannot create the folder 'notes/todo.txt/idx': Not a directory"),
])
def test_build_refuses_an_out_that_is_not_an_index(tmp_path, monkeypatch, capsys, out, message):
    """Run from a scratch folder: before the fix, `--out ""` or `--out .` deleted the working folder's files."""
    write_pool(tmp_path / "data" / "p.jsonl")
    (tmp_path / "work" / "notes").mkdir(parents=True)
    (tmp_path / "work" / "notes" / "todo.txt").write_text("keep me", encoding="utf-8")
    monkeypatch.chdir(tmp_path / "work")
    before = snapshot(tmp_path)
    assert cli(["build", "--pool", "../data/p.jsonl", "--out", out, "--embedder", "hash"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {message}") and error.count("\n") == 1, error
    assert snapshot(tmp_path) == before


def test_rebuild_replaces_the_index_and_nothing_else(tmp_path, capsys):
    first, second = write_pool(tmp_path / "a.jsonl"), write_pool(tmp_path / "b.jsonl", ("loved it", "pos"))
    out = tmp_path / "idx"
    assert cli(["build", "--pool", str(first), "--out", str(out), "--embedder", "hash"]) == 0
    old_files = {path.name for path in out.iterdir()}
    (out / "README").write_text("my notes about this index", encoding="utf-8")
    assert cli(["build", "--pool", str(second), "--out", str(out), "--embedder", "hash"]) == 0
    names = {path.name for path in out.iterdir()}
    assert names & old_files == {"meta.json"}, "the first build's data files are removed"
    assert (out / "README").read_text(encoding="utf-8") == "my notes about this index"
    assert DemoIndex.load(out, HashEmbedder()).pool.sha256 == load_pool(second).sha256


def test_library_refuses_to_build_over_a_folder_that_is_not_an_index(tmp_path):
    library = PoolLibrary(root=tmp_path / "indexes", embedder=HashEmbedder())
    (tmp_path / "indexes" / "mine").mkdir(parents=True)
    (tmp_path / "indexes" / "mine" / "photo.jpg").write_bytes(b"not an index")
    with pytest.raises(StorageError, match="mine' already holds files and is not an index"):
        library.build_from_upload("mine", write_pool(tmp_path / "upload.jsonl"))
    assert (tmp_path / "indexes" / "mine" / "photo.jpg").read_bytes() == b"not an index"


@pytest.mark.parametrize("query", ["", "   "])
def test_search_refuses_an_empty_query(tmp_path, capsys, query):
    assert cli(["build", "--pool", str(write_pool(tmp_path / "p.jsonl")), "--out", str(tmp_path / "idx"),
                "--embedder", "hash"]) == 0
    capsys.readouterr()
    assert cli(["search", "--index", str(tmp_path / "idx"), "--query", query, "-k", "1", "--embedder", "hash"]) == 2
    assert capsys.readouterr().err == "error: --query is empty; give the text to search for\n"


def test_overlong_row_is_refused_or_skipped_with_the_flag(tmp_path, capsys):
    pool = write_pool(tmp_path / "p.jsonl", ("fine", "pos"), ("x" * MAX_RECORD_CHARS, "neg"))
    build = ["build", "--pool", str(pool), "--out", str(tmp_path / "idx"), "--embedder", "hash"]
    assert cli(build) == 2
    assert capsys.readouterr().err == ("error: p.jsonl: 1 bad row: line 2: input and output are 20,003 characters; "
                                       "the limit is 20,000 per row; pass --skip-bad to leave them out\n")
    assert cli([*build, "--skip-bad"]) == 0
    assert capsys.readouterr().out.endswith(f"into {tmp_path / 'idx'} (1 bad row skipped)\n")


@pytest.mark.parametrize("rows, message", [
    (None, "pool file '{dir}/p.jsonl' does not exist"),
    ([{"text": "no input field"}], "p.jsonl: 1 bad row: line 1: missing field 'input'; pass --skip-bad"),
])
def test_a_bad_pool_is_named_before_the_embedder_loads(tmp_path, capsys, monkeypatch, rows, message):
    import retrieval.embedder

    monkeypatch.setattr(retrieval.embedder, "load_embedder", lambda name: pytest.fail("loaded the embedder first"))
    if rows is not None:
        (tmp_path / "p.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert cli(["build", "--pool", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "idx")]) == 2
    assert capsys.readouterr().err.startswith("error: " + message.format(dir=tmp_path))
    helped = run("bench", "--help")
    assert helped.returncode == 0 and "usage: python -m bench NAME" in helped.stdout and "retrieval" in helped.stdout


def test_two_builds_of_one_new_name_keep_the_first(tmp_path):
    """Both pass the check before embedding; the second, built while the first saved, is refused
    when it comes to save instead of replacing the pool the first user just made."""
    import threading

    from retrieval.library import PoolExistsError

    entered, go = threading.Event(), threading.Event()

    class Held(HashEmbedder):
        def embed_batch(self, texts):
            if not entered.is_set():
                entered.set()
                go.wait(30)  # the first build waits here, holding the library's lock
            return super().embed_batch(texts)

    library = PoolLibrary(root=tmp_path / "indexes", embedder=Held())
    rows = {name: write_pool(tmp_path / f"{name}.jsonl", (f"{name} film", "pos"), (f"{name} book", "neg"))
            for name in ("a", "b")}
    first = threading.Thread(target=library.build_from_upload, args=("shared", rows["a"]))
    first.start()
    entered.wait(30)
    outcome = {}

    def second():
        try:
            library.build_from_upload("shared", rows["b"])
        except PoolExistsError as error:
            outcome["error"] = error

    late = threading.Thread(target=second)
    late.start()
    go.set()
    first.join(60)
    late.join(60)
    assert "exists already" in str(outcome.get("error"))
    assert library.get("shared").pool.examples[0].input.startswith("a")
