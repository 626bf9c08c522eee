"""Pools and indexes by name, for the app: the built-in pools plus the user's own indexes.

    library = PoolLibrary()                       # indexes under bot.paths.indexes_dir()
    library.names()                               # {'sentiment': 'built-in', 'mine': 'user', ...}
    index = library.get("sentiment")              # built and cached on first use
    library.build_from_upload("mine", "/tmp/upload.csv", input_field="text", progress=callback)

A built-in pool's index is built on first use and saved under `<root>/builtin/<name>`; it is
rebuilt when the pool file changes (its hash no longer matches). User indexes live in
`<root>/<name>`. Names are checked so that no name can reach outside the root. Loaded indexes
are cached per library; a lock keeps two requests from building or loading the same index twice.
This module does no selection or prompting.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from retrieval.embedder import Embedder, Progress, load_embedder
from retrieval.index import DemoIndex, IndexMismatch
from retrieval.pool import builtin_pools, load_pool
from retrieval.storage import META_FILE, StorageError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
BUILTIN_FOLDER = "builtin"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024


class LibraryError(ValueError):
    """A name or upload the library refuses; the message says what is allowed."""


class PoolExistsError(LibraryError):
    """A user pool of that name exists and the build did not ask to replace it."""


def check_name(name: str) -> str:
    """`name` if it is a safe index name: letters, digits, '-' and '_', at most 64, no path parts."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name == BUILTIN_FOLDER:
        raise LibraryError(
            f"invalid index name {name!r}: use 1-64 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return name


class PoolLibrary:
    """Lists, loads, caches and builds demonstration indexes under one root folder."""

    def __init__(
        self, root: str | Path | None = None, embedder: Embedder | str = "default", max_upload_bytes: int = MAX_UPLOAD_BYTES
    ):
        from bot.paths import indexes_dir

        self.root = Path(root) if root is not None else indexes_dir()
        self.max_upload_bytes = max_upload_bytes
        self._embedder = embedder
        self._cache: dict[str, DemoIndex] = {}
        self._lock = threading.Lock()

    @property
    def embedder(self) -> Embedder:
        """The embedder, loaded on first use (call under the lock)."""
        if isinstance(self._embedder, str):
            self._embedder = load_embedder(self._embedder)
        return self._embedder

    def names(self) -> dict[str, str]:
        """Every available index name -> 'built-in' or 'user', built-in pools first."""
        found = {name: "built-in" for name in builtin_pools()}
        if self.root.is_dir():
            for folder in sorted(self.root.iterdir()):
                inside = folder.resolve().is_relative_to(self.root.resolve())
                if inside and (folder / META_FILE).is_file() and NAME_PATTERN.fullmatch(folder.name) \
                        and folder.name not in found:
                    found[folder.name] = "user"
        return found

    def _refuse_taken(self, name: str, replace: bool) -> None:
        if not replace and self.names().get(name) == "user":
            raise PoolExistsError(f"a pool named '{name}' exists already; choose another name, or replace it")

    def get(self, name: str, progress: Progress | None = None) -> DemoIndex:
        """The index called `name`, from the cache, from disk, or (built-in pools) freshly built."""
        check_name(name)
        with self._lock:
            if name not in self._cache:
                self._cache[name] = self._open(name, progress)
            return self._cache[name]

    def _open(self, name: str, progress: Progress | None) -> DemoIndex:
        pools = builtin_pools()
        if name in pools:
            pool = load_pool(pools[name])
            folder = self.root / BUILTIN_FOLDER / name
            try:
                return DemoIndex.load(folder, self.embedder, pool=pool)
            except (StorageError, IndexMismatch):
                index = DemoIndex.build(pool, self.embedder, progress=progress)
                index.save(folder)
                return index
        folder = self.root / name
        if not (folder / META_FILE).is_file():
            raise LibraryError(f"unknown index '{name}'; available: {', '.join(self.names())}")
        if not folder.resolve().is_relative_to(self.root.resolve()):
            raise LibraryError(f"index '{name}' points outside the indexes folder {self.root}; refusing to read it")
        return DemoIndex.load(folder, self.embedder)

    def build_from_upload(
        self,
        name: str,
        path: str | Path,
        input_field: str = "input",
        output_field: str = "output",
        skip_bad: bool = False,
        task: str | None = None,
        progress: Progress | None = None,
        replace: bool = False,
    ) -> DemoIndex:
        """Build and save a user index from an uploaded pool file. An index of the same name (pools are
        shared by every user of the app) is refused unless `replace`, and then kept until the new one is built."""
        check_name(name)
        if name in builtin_pools():
            raise LibraryError(f"'{name}' is a built-in pool; choose another name")
        self._refuse_taken(name, replace)  # before the minutes of embedding; again before the save
        size = Path(path).stat().st_size
        if size > self.max_upload_bytes:
            raise LibraryError(f"the file is {size:,} bytes; the limit is {self.max_upload_bytes:,} bytes")
        pool = load_pool(path, input_field, output_field, skip_bad=skip_bad, task=task)
        with self._lock:
            index = DemoIndex.build(pool, self.embedder, progress=progress)
            self._refuse_taken(name, replace)
            index.save(self.root / name)
            self._cache[name] = index
        return index
