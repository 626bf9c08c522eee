"""`python -m retrieval` end to end, `python -m bench` dispatch, and the PoolLibrary the app uses."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.embedder import HashEmbedder
from retrieval.library import LibraryError, PoolLibrary, check_name

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
