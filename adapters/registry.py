"""Find adapters, by name in the adapters directory, by folder path, or by hub id, and vet them.

The registry lists what exists (`python -m adapters list [--json]`) and turns a name into a
checked `AdapterInfo`: a safe name, a folder that stays inside the adapters directory, safetensors
weights whose checksums match the metadata, trained on the loaded base, with LoRA shapes that fit
it. It never touches a model's weights; `host.py` attaches what the registry has vetted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from adapters.checks import (
    AdapterError, check_base, check_checksums, check_files, check_inside, check_shapes, read_config, weight_shapes,
)
from adapters.config import NAME_PATTERN, RESERVED, check_adapter_name
from adapters.metadata import CONFIG_FILE, AdapterMetadata, MetadataError, weight_files
from adapters.publish import recover

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class AdapterInfo:
    name: str
    """Registry name; also the adapter's name inside PEFT and the Generator's `adapter=` value."""
    path: Path
    """Local folder holding the adapter files (a hub adapter's download folder)."""
    metadata: AdapterMetadata | None
    """None for hub adapters trained elsewhere, and for local folders whose metadata is unreadable."""
    problem: str | None = None
    """Why a listed adapter cannot be loaded (e.g. no metadata); None when it looks loadable."""

    def summary(self) -> dict:
        """One JSON-ready row for a listing or a UI picker."""
        meta = self.metadata
        return {
            "name": self.name, "path": str(self.path), "base_model": meta.base_model if meta else None,
            "steps": meta.steps if meta else None, "examples": meta.examples if meta else None,
            "final_loss": _finite(meta.final_loss) if meta else None, "eval_loss": _finite(meta.eval_loss) if meta else None,
            "data_file": meta.data_file if meta else None, "problem": self.problem,
        }


def _finite(value: float | None) -> float | None:
    """A loss for JSON, which has no NaN: a non-finite one shows as null (the adapter's problem says why)."""
    return value if value is None or math.isfinite(value) else None


class AdapterRegistry:
    def __init__(self, root: Path | str | None = None, allow_pickle: bool = False):
        from bot.paths import adapters_dir

        self.root = Path(root) if root is not None else adapters_dir()
        self.allow_pickle = allow_pickle

    def list(self) -> list[AdapterInfo]:
        """Every adapter folder in the directory, sorted by name; hidden and oddly named folders are skipped."""
        if not self.root.is_dir():
            return []
        recover(self.root)
        folders = [p for p in sorted(self.root.iterdir()) if NAME_PATTERN.match(p.name) and (p / CONFIG_FILE).is_file()]
        return [self._describe(folder) for folder in folders]

    def passed_over(self) -> list[str]:
        """What `list` skips that a user may be looking for, one line each: adapter folders whose name
        cannot name an adapter, and the checkpoints of interrupted training runs."""
        from adapters.checkpoint import in_progress, latest, step_of

        if not self.root.is_dir():
            return []
        lines = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") and folder.name.endswith(".run"):
                output = folder.parent / folder.name[1:-4]
                found = latest(output)
                if found is not None and in_progress(output):
                    lines.append(f"{folder.name}: a training run in progress, checkpoint at step {step_of(found)}")
                elif found is not None:
                    lines.append(f"{folder.name}: an interrupted training run, checkpoint at step {step_of(found)} "
                                 "(--resume continues it, --restart discards it)")
            elif not folder.name.startswith(".") and (folder / CONFIG_FILE).is_file() and not NAME_PATTERN.match(folder.name):
                lines.append(f"{folder.name}: holds an adapter, but its name cannot name one (letters, digits, '-' "
                             "and '_'); rename the folder")
        return lines

    def names(self) -> list[str]:
        """The adapters that can be offered: listed, and with no problem the folder itself shows."""
        return [info.name for info in self.list() if info.problem is None]

    def _describe(self, folder: Path) -> AdapterInfo:
        try:
            metadata = AdapterMetadata.read(folder)
        except MetadataError as error:
            return AdapterInfo(name=folder.name, path=folder, metadata=None, problem=str(error))
        return AdapterInfo(name=folder.name, path=folder, metadata=metadata, problem=self._problem(folder, metadata))

    def _problem(self, folder: Path, metadata: AdapterMetadata) -> str | None:
        """What the folder alone shows would stop it from loading: a reserved name, missing or pickle
        weights, changed checksums. (The base and the shapes need the model: `vet` checks them.)"""
        if folder.name in RESERVED:
            return f"the name '{folder.name}' is reserved for the base model; rename the folder"
        try:
            check_files(folder, self.allow_pickle)
            _check_checksums_once(folder, metadata)
            _check_converged(folder.name, metadata)
        except AdapterError as error:
            return str(error)
        return None

    def resolve(self, name: str) -> AdapterInfo:
        """A registry name or a hub id (`owner/repo`) as an AdapterInfo; files are not checked yet."""
        if HUB_ID.match(name):
            return self._from_hub(name)
        self._check_name(name)
        folder = self.root / name
        if not folder.exists() and self.root.is_dir():
            recover(self.root)
        if not folder.exists():
            available = ", ".join(self.names()) or f"none yet in {self.root} (python -m adapters.train makes one)"
            raise AdapterError(f"unknown adapter '{name}'; available: {available}")
        check_inside(folder, self.root)
        return self._describe(folder)

    def resolve_path(self, folder: Path | str) -> AdapterInfo:
        """An adapter folder given by path (the CLI's `--adapter DIR`); its name is the folder's name."""
        folder = Path(folder).expanduser().resolve()
        if not folder.is_dir():
            raise AdapterError(f"adapter folder '{folder}' does not exist")
        self._check_name(folder.name)
        check_inside(folder, folder)
        return self._describe(folder)

    @staticmethod
    def _check_name(name: str) -> None:
        try:
            check_adapter_name(name)
        except ValueError as error:
            raise AdapterError(str(error)) from None

    def _from_hub(self, hub_id: str) -> AdapterInfo:
        """Download a hub adapter's files, or, offline, use the copy in the local hub cache."""
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            IncompleteSnapshotError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        from bot.models import hub_reachable

        patterns = [CONFIG_FILE, "*.safetensors", "adapter_metadata.json"] + (["*.bin"] if self.allow_pickle else [])
        online = hub_reachable()
        try:
            folder = Path(snapshot_download(hub_id, allow_patterns=patterns, local_files_only=not online))
        except IncompleteSnapshotError:
            raise AdapterError(f"adapter '{hub_id}': the local hub cache holds an incomplete copy of it "
                               "and the hub cannot be reached to complete it") from None
        except (RepositoryNotFoundError, RevisionNotFoundError):
            raise AdapterError(f"adapter '{hub_id}': no such repository on the hub (or it is private)") from None
        except HfHubHTTPError as error:
            raise AdapterError(f"adapter '{hub_id}': the hub answered {error}") from None
        except LocalEntryNotFoundError:
            raise AdapterError(
                f"adapter '{hub_id}' is a hub id, but the Hugging Face hub cannot be reached (offline?) "
                "and the local hub cache has no copy of it"
            ) from None
        name = hub_id.replace("/", "--").replace(".", "_")[:64]
        info = self._describe(folder)
        return AdapterInfo(name=name, path=folder, metadata=info.metadata)

    def vet(self, info: AdapterInfo, loaded, base_weights: tuple[str, list[float]]) -> None:
        """Every check before loading `info` onto `loaded` (`base_weights`: `metadata.base_weights` of its model)."""
        weights = check_files(info.path, self.allow_pickle)
        config = read_config(info.path)
        if info.metadata is not None:
            check_checksums(info.path, info.metadata)
            _check_converged(info.name, info.metadata)
            check_base(info.name, info.metadata.base_model, info.metadata, loaded.name, base_weights)
        elif info.problem is not None:
            raise AdapterError(f"adapter '{info.name}' cannot be verified: {info.problem}")
        else:  # a hub adapter trained elsewhere: PEFT's config names its base
            check_base(info.name, config.get("base_model_name_or_path") or "unknown", None, loaded.name, base_weights)
        check_shapes(info.name, config, weight_shapes(weights), _unwrapped(loaded.model))


def _check_converged(name: str, metadata: AdapterMetadata) -> None:
    """Refuse an adapter whose training loss was not finite (published before runs stopped at a NaN):
    its weights answer with nothing."""
    for field in ("final_loss", "eval_loss"):
        value = getattr(metadata, field)
        if value is not None and not math.isfinite(value):
            raise AdapterError(f"adapter '{name}' diverged in training ({field} {value}); train it again")


_VERIFIED: set[tuple] = set()
"""Folders whose checksums matched, keyed by their weight files' sizes and times: listing stays cheap."""


def _check_checksums_once(folder: Path, metadata: AdapterMetadata) -> None:
    files = [*weight_files(folder), Path(folder) / CONFIG_FILE]
    stats = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())
    key = (str(folder.resolve()), stats, tuple(sorted(metadata.checksums.items())))
    if key not in _VERIFIED:
        check_checksums(folder, metadata)
        _VERIFIED.add(key)


def _unwrapped(model):
    """The transformers model under a PeftModel (with LoRA layers in it), or the model itself."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model
