"""Write a folder atomically: readers see the old complete folder or the new complete one, never half.

The new content is written into a hidden temporary folder beside the target (same file system, so
renames are atomic). Only when it is complete does it take the target's name: on Linux the two
folders trade names in one atomic `renameat2(RENAME_EXCHANGE)`; elsewhere the old folder moves
aside to `.retired-*` first, and `recover` (which the registry calls before it reads) puts it back
if a crash fell between the two renames. A crash while writing leaves the old folder untouched
and at most a hidden `.partial-*` folder, which the registry never lists. This module knows
nothing about what is in the folder.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

PARTIAL_PREFIX = ".partial-"
RETIRED_PREFIX = ".retired-"


class TargetError(ValueError):
    """The folder to write would replace something that is not an earlier version of it."""


def check_target(target: Path | str, marker: str, kind: str) -> Path:
    """Refuse a `target` that publishing would destroy: a file, or a non-empty folder without `marker`
    (the file every folder of this `kind` holds). An earlier version of the same kind, an empty
    folder or a new path may be replaced. Returns the target as a Path. (An index folder, which is
    rewritten file by file rather than swapped whole, has its own check: `retrieval.storage.check_writable`.)"""
    if not str(target).strip():
        raise TargetError(f"no output folder given; name one for {kind}")
    path = Path(target).expanduser()
    if path.is_file() or path.is_symlink():
        raise TargetError(f"'{path}' is a file (or a link); {kind} needs a folder of its own")
    problem = creation_problem(path)
    if problem:
        raise TargetError(problem)
    if path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):  # the new version is staged beside it
        raise TargetError(f"cannot replace '{path}': no permission to write in '{path.parent}'")
    if path.is_dir() and not (path / marker).is_file() and any(path.iterdir()):
        raise TargetError(
            f"'{path}' already holds files and is not {kind}, so writing there would delete them; "
            "choose a new folder (or empty that one yourself)"
        )
    return path


def creation_problem(path: Path) -> str | None:
    """Why the folder `path` could not be made (a file in the way, no permission), or None: the checks
    `mkdir(parents=True)` would fail, made before any work whose result would then be lost."""
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor == path:
        return None
    if not ancestor.is_dir():
        return f"cannot create '{path}': '{ancestor}' is a file, not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot create '{path}': no permission to write in '{ancestor}'"
    return None


def publish(target: Path, write: Callable[[Path], None], marker: str | None = None, kind: str = "a folder") -> Path:
    """Call `write(staging_folder)`, then put the staging folder in place of `target`.

    With `marker`, an existing target must pass `check_target` first, and again just before the swap.
    """
    target = check_target(target, marker, kind) if marker else Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the published folder is an ordinary one
    try:
        write(staging)
        _ordinary_modes(staging)
        _sync_folder(staging)
        if marker:
            check_target(target, marker, kind)  # it may have changed while `write` ran
        _swap(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _swap(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # it now holds the old folder
        return
    retired = Path(tempfile.mkdtemp(prefix=f"{RETIRED_PREFIX}{target.name}-", dir=target.parent))
    os.replace(target, retired / target.name)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(retired / target.name, target)  # put the old one back
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths' names atomically (Linux renameat2); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM):  # file system or kernel without the flag
        return False
    raise OSError(code, os.strerror(code), str(b))


def recover(parent: Path) -> None:
    """Put back folders a crash left in `.retired-*` without a successor under their name."""
    for retired in Path(parent).glob(f"{RETIRED_PREFIX}*"):
        for folder in retired.iterdir() if retired.is_dir() else []:
            if not (Path(parent) / folder.name).exists():
                os.replace(folder, Path(parent) / folder.name)
        shutil.rmtree(retired, ignore_errors=True)


def _ordinary_modes(folder: Path) -> None:
    """Give every file the permissions a new file gets here: safetensors writes its files private."""
    mode = ordinary_file_mode(folder)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def ordinary_file_mode(folder: Path) -> int:
    """The permissions a new file in `folder` gets by default (0o644 under the usual umask), found
    by creating one: reading the umask means setting it, for every thread of the process at once.
    Files written through a private temporary file (or by safetensors) get these, so that another
    user, a vLLM server say, can read them as it reads the rest."""
    probe = Path(folder) / f".mode-probe-{uuid.uuid4().hex}"
    handle = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return os.fstat(handle).st_mode & 0o777
    finally:
        os.close(handle)
        probe.unlink()


def _sync_folder(folder: Path) -> None:
    """Flush the new files to disk before they get their final name, so a power cut cannot publish empty files."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
