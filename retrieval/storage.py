"""Crash-safe writes of a folder of files, with checksums verified on read.

A stored folder holds content-named data files and one `meta.json` that lists them with their
sha256. A save writes the data files under temporary names, renames each into place, and only
then replaces `meta.json` (one `os.replace`, atomic on POSIX and Windows). Until that last step
the old `meta.json` still names the old files, which are left alone, so an interrupted save
leaves the previous version readable; data files no longer named are removed afterwards.

A save goes only into a folder that is missing, empty, or one a save wrote (its `meta.json`
lists content-named files, or it holds only what an interrupted save left). Anything else, a
home directory or the folder holding the pool, is refused, and the cleanup after a save only
ever removes files named the way a save names them, so no file of the user's is ever deleted.

This module moves bytes; what the files mean is `retrieval.index`'s business.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

META_FILE = "meta.json"
DATA_NAME = re.compile(r"[a-z]+-[0-9a-f]{16}")
"""How a save names a data file: `<role>-<sha256 prefix>`."""
TEMP_PREFIXES = (".partial-", ".staged-")
"""Temporary names a save writes under; an interrupted save leaves them behind."""


class StorageError(ValueError):
    """A stored folder that is missing, incomplete or altered since it was written."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_file_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temp_path)` and rename the result to `path`; no half-written `path` is ever seen."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".partial-{uuid.uuid4().hex}"
    # not mkstemp, which makes the file private: this one gets what the umask gives any new file
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def save_folder(folder: Path, files: dict[str, Callable[[Path], None]], meta: dict) -> dict:
    """Write `files` (role -> writer) and `meta.json` into `folder`; return the meta as written.

    Each data file is named `<role>-<sha256 prefix>`, so a new version never overwrites a file the
    current `meta.json` refers to. The meta gains `files`: role -> {name, sha256}.
    """
    folder = Path(folder)
    check_writable(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"cannot create the folder '{folder}': {error.strerror}") from error
    listed = {}
    for role, write in files.items():
        staged = folder / f".staged-{role}"
        write_file_atomic(staged, write)
        digest = sha256_file(staged)
        name = f"{role}-{digest[:16]}"
        os.replace(staged, folder / name)
        listed[role] = {"name": name, "sha256": digest}
    meta = {**meta, "files": listed}
    text = json.dumps(meta, ensure_ascii=False, indent=2) + "\n"
    write_file_atomic(folder / META_FILE, lambda temp: temp.write_text(text, encoding="utf-8"))
    _remove_unlisted(folder, {entry["name"] for entry in listed.values()})
    return meta


def check_writable(folder: Path) -> None:
    """Refuse a `folder` that is a file, or that holds anything a save might overwrite or delete.

    An index is saved file by file into its folder and the save deletes files it did not list, so
    every name in the folder is checked. (`adapters.publish.check_target` guards folders that are
    replaced whole; there one marker file is enough to tell an earlier version.)"""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"'{folder}' is a file, not a folder; choose a folder to save into")
    if folder.is_dir() and not _written_by_save(folder):
        raise StorageError(
            f"'{folder}' already holds files and is not an index, so writing there would delete them; "
            "choose a new folder (or empty that one yourself)"
        )


def _written_by_save(folder: Path) -> bool:
    """Whether `folder` is empty or holds a save's files, so that saving again loses nothing of anyone's."""
    names = {path.name for path in folder.iterdir()}
    others = names - {META_FILE}
    if META_FILE not in names:
        return all(_save_named(name) for name in others)
    try:
        listed = read_meta(folder)["files"].values()
    except (StorageError, KeyError, AttributeError):
        # A damaged meta.json among nothing but a save's data files is an index of ours that a rebuild
        # repairs; a lone meta.json, or one beside other files, may be someone else's.
        return any(DATA_NAME.fullmatch(name) for name in others) and all(_save_named(name) for name in others)
    return all(isinstance(entry, dict) and DATA_NAME.fullmatch(str(entry.get("name"))) for entry in listed)


def _save_named(name: str) -> bool:
    return bool(DATA_NAME.fullmatch(name)) or name.startswith(TEMP_PREFIXES)


def _remove_unlisted(folder: Path, keep: set[str]) -> None:
    """Delete older versions' data files and interrupted saves' leftovers; nothing else in `folder`."""
    for path in folder.iterdir():
        if _save_named(path.name) and path.name not in keep and path.is_file():
            path.unlink(missing_ok=True)


def read_meta(folder: Path) -> dict:
    """The folder's `meta.json`, or StorageError if the folder holds no saved version."""
    meta_path = Path(folder) / META_FILE
    if not meta_path.is_file():
        raise StorageError(f"no index at '{folder}' ({META_FILE} is missing)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StorageError(f"'{meta_path}' is corrupted: {error}") from error
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise StorageError(f"'{meta_path}' is corrupted: it lists no files")
    return meta


def verified_path(folder: Path, meta: dict, role: str) -> Path:
    """The path of a listed file after checking it exists and its sha256 matches the meta."""
    entry = meta["files"].get(role)
    if entry is None:
        raise StorageError(f"'{folder}' is incomplete: {META_FILE} lists no '{role}' file")
    path = Path(folder) / entry["name"]
    if not path.is_file():
        raise StorageError(f"'{folder}' is incomplete: '{entry['name']}' is missing")
    if sha256_file(path) != entry["sha256"]:
        raise StorageError(
            f"'{path}' is corrupted or was modified: its sha256 does not match {META_FILE}; rebuild the index"
        )
    return path
