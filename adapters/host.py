"""Attach and detach LoRA adapters on a loaded model at run time, without reloading the base.

The first adapter wraps `loaded.model` into a PeftModel in place; later ones are loaded beside it
and stay resident, so each request picks one by name (`Generator.stream(..., adapter=NAME)`).
No adapter is ever active by default: a plain forward call is the base model, and only an explicit
`adapter_names` applies an adapter, so code that forgets to name one cannot get a fine-tune by
accident. Every change to the model happens under the generator's lock, so a request never sees
a half-loaded adapter. Vetting the files is `registry.py`'s job.

    host = AdapterHost(loaded, generator.lock)
    name = host.attach("captain-kelp")        # or a folder path via attach_for_cli, or a hub id
    generator.complete(messages, settings, adapter=name)
    host.detach(name)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from adapters.checks import AdapterError
from adapters.registry import AdapterInfo, AdapterRegistry


class AdapterHost:
    def __init__(self, loaded, lock: threading.Lock, registry: AdapterRegistry | None = None):
        from adapters.metadata import base_weights

        self.loaded = loaded
        self.lock = lock
        self.registry = registry or AdapterRegistry()
        self.base_weights = base_weights(loaded.model)
        self._paths: dict[str, Path] = {}
        self._versions: dict[str, tuple] = {}
        """What each attached adapter's files were when loaded (`files_version`)."""

    @property
    def attached(self) -> list[str]:
        """Names of the adapters resident on the model, in the order they were attached."""
        return list(self._paths)

    def attach(self, name: str) -> str:
        """Attach a registry adapter or hub id by name; return the name to pass as `adapter=`."""
        return self.attach_info(self.registry.resolve(name))

    def attach_path(self, folder: Path | str) -> str:
        """Attach an adapter folder given by path; its folder name becomes its name."""
        return self.attach_info(self.registry.resolve_path(folder))

    def current(self, name: str) -> str:
        """`name` for a request: an attached registry adapter whose folder was replaced since it was
        loaded (trained again under its name) is loaded anew first, and one whose folder was deleted
        is detached (and no longer offered). One listing of its folder per call."""
        path = self._paths.get(name)
        if path is None or path != self.registry.root / name:
            return name
        try:
            version = files_version(path)
        except OSError:
            time.sleep(REPLACE_GRACE_S)  # a publish swaps folders with two renames: it may be between them
            if not path.is_dir():
                with self.lock:
                    self._remove_if_attached({name})
                raise AdapterError(f"adapter '{name}' was deleted from the adapters folder; it is no longer "
                                   "served") from None
            return self.attach(name)
        return self.attach(name) if version != self._versions.get(name) else name

    def deleted(self) -> set[str]:
        """Attached registry adapters whose folder is gone."""
        return {name for name, path in list(self._paths.items())
                if path == self.registry.root / name and not path.is_dir()}

    def prune_deleted(self) -> set[str]:
        """Detach the adapters whose folder was deleted, unless a generation holds the model now (then
        the next call does), and return their names: lists leave them out either way."""
        gone = self.deleted()
        if gone and self.lock.acquire(blocking=False):
            try:
                self._remove_if_attached(gone)
            finally:
                self.lock.release()
        return gone

    def offered(self) -> list[str]:
        """The registry's adapters this model can take: listed with no problem, and trained on this
        base model (its name, and its weights where the metadata records them)."""
        return [info.name for info in self.registry.list() if self._unfit(info) is None]

    def why_not_offered(self, name: str) -> str | None:
        """Why a folder in the adapters directory named `name` is not offered; None if it is, or if there is none."""
        info = next((info for info in self.registry.list() if info.name == name), None)
        return None if info is None else self._unfit(info)

    def _unfit(self, info: AdapterInfo) -> str | None:
        from adapters.checks import check_base

        if info.problem is not None or info.metadata is None:  # a listed folder without metadata has a problem
            return f"adapter '{info.name}' cannot be used: {info.problem}"
        try:
            check_base(info.name, info.metadata.base_model, info.metadata, self.loaded.name, self.base_weights)
        except AdapterError as error:
            return str(error)
        return None

    def _remove_if_attached(self, names: set[str]) -> None:
        """`_remove` each of `names` still attached (another request may have removed it), under the lock."""
        for name in names & set(self._paths):
            self._remove(name)

    def attach_info(self, info: AdapterInfo) -> str:
        """Vet and load one adapter. Attaching a name again from the same folder does nothing while its
        files are the ones loaded; once they changed (trained again under the same name), the new files
        are vetted, and replace the old weights only if they pass (if not, the request fails with
        what is wrong, and so does each later one until the folder is fixed)."""
        version = _version(info.name, info.path)
        with self.lock:
            if info.name in self._paths:
                if self._paths[info.name] != info.path:
                    raise AdapterError(
                        f"an adapter named '{info.name}' is already attached from {self._paths[info.name]}; detach it first"
                    )
                if self._versions[info.name] == version:
                    return info.name
            self.registry.vet(info, self.loaded, self.base_weights)
            if info.name in self._paths:
                self._remove(info.name)
            self._load(info)
            self._paths[info.name] = info.path
            self._versions[info.name] = version
        return info.name

    def _load(self, info: AdapterInfo) -> None:
        from peft import PeftModel

        model = self.loaded.model
        if isinstance(model, PeftModel):
            model.load_adapter(str(info.path), adapter_name=info.name, is_trainable=False)
        else:
            model = PeftModel.from_pretrained(model, str(info.path), adapter_name=info.name, is_trainable=False)
        _no_active_adapter(model)
        self.loaded.model = model.eval()

    def detach(self, name: str) -> None:
        """Remove one adapter; removing the last one gives back the plain base model."""
        with self.lock:
            if name not in self._paths:
                raise AdapterError(f"adapter '{name}' is not attached; attached: {', '.join(self._paths) or 'none'}")
            self._remove(name)

    def _remove(self, name: str) -> None:
        """`detach`'s work, under the lock the caller holds."""
        model = self.loaded.model
        if len(self._paths) == 1:
            self.loaded.model = model.unload().eval()
        else:
            model.delete_adapter(name)
            _no_active_adapter(model)
        del self._paths[name]
        del self._versions[name]

    def detach_all(self) -> None:
        for name in self.attached:
            self.detach(name)


REPLACE_GRACE_S = 0.2
"""How long a request waits to see whether an adapter folder that is missing is being replaced."""


def _version(name: str, folder: Path) -> tuple:
    try:
        return files_version(folder)
    except OSError as error:  # removed, or (without an atomic swap) between the two renames of a publish
        raise AdapterError(f"adapter '{name}' was removed or is being replaced ({error.strerror}); try again") from None


def files_version(folder: Path) -> tuple:
    """Which version of an adapter folder's files this is: each file's name, inode, size and time.
    Publishing a retrained adapter swaps in a new folder, so every inode changes."""
    entries = []
    for path in sorted(Path(folder).iterdir()):
        if path.is_file():
            stat = path.stat()
            entries.append((path.name, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def _no_active_adapter(peft_model) -> None:
    """Make plain forward calls run the base; `adapter_names` still selects any resident adapter.

    The LoRA layers get no active adapter. PeftModel itself must still name a resident one: it reads
    that adapter's config (task type) on every forward call, not its weights.
    """
    peft_model.active_adapter = next(iter(peft_model.peft_config))
    peft_model.base_model.set_adapter([])


def attach_for_cli(loaded, name_or_path: str, lock: threading.Lock, registry: AdapterRegistry | None = None) -> str:
    """Attach an adapter for `python -m bot ask --adapter X`: a folder path, a registry name or a hub id.

    Returns the name to pass to `Generator.stream/complete(adapter=...)`. `lock` is the generator's.
    """
    host = AdapterHost(loaded, lock, registry)
    return host.attach_info(resolve_cli_adapter(name_or_path, host.registry))


def resolve_cli_adapter(text: str, registry: AdapterRegistry | None = None) -> AdapterInfo:
    """`--adapter` as every command line reads it: a folder path (a missing one is named as a folder),
    else a name in the adapters folder or a hub id. Files are checked when it is attached (`vet`)."""
    registry = registry or AdapterRegistry()
    if not text.strip():  # "" is no path to the current folder
        raise AdapterError("the adapter name is empty; leave out --adapter to use the base model")
    if _looks_like_path(text) or (Path(text).expanduser().is_dir() and not _is_plain_name(text)):
        return registry.resolve_path(text)
    return registry.resolve(text)


def _looks_like_path(text: str) -> bool:
    """Written as a path: absolute, relative with ./ or ../, or from ~ (a hub id is `owner/repo`)."""
    return text.startswith(("/", "./", "../", "~")) or text in (".", "..")


def _is_plain_name(text: str) -> bool:
    from adapters.config import NAME_PATTERN

    return bool(NAME_PATTERN.match(text))
