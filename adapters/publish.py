"""Write a folder atomically: readers see the old complete folder or the new complete one, never half.

The new content is written into a hidden temporary folder beside the target (same file system, so
renames are atomic). Only when it is complete does the old folder move aside and the new one take
its name; a crash while writing leaves the old folder untouched and at most a hidden `.partial-*`
folder, which the registry never lists. This module knows nothing about what is in the folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

PARTIAL_PREFIX = ".partial-"
RETIRED_PREFIX = ".retired-"


def publish(target: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(staging_folder)`, then put the staging folder in place of `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the published folder is an ordinary one
    try:
        write(staging)
        _sync_folder(staging)
        _swap(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _swap(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
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


def _sync_folder(folder: Path) -> None:
    """Flush the new files to disk before they get their final name, so a power cut cannot publish empty files."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
