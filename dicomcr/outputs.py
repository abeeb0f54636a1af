"""Where a command writes: checked before the work, so that a bad path costs nothing."""

from __future__ import annotations

import os
from pathlib import Path


def output_folder(folder: Path) -> Path:
    """Create `folder` (and its parents) and check that it can be written; ValueError says why."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the output folder {folder}: "
                         f"{exc.strerror or exc}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"the output folder {folder} is not writable")
    return folder


def output_file(path: Path) -> Path:
    """Check that the file `path` can be written (its folder created if need be) before the
    work that produces it; ValueError says why."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a file name")
    try:
        output_folder(path.parent)
    except ValueError as exc:
        raise ValueError(f"cannot write {path}: {exc}") from exc
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"cannot write {path}: it exists and is not writable")
    return path


def write_text_atomically(path: Path, text: str, durable: bool = False) -> None:
    """Write `text` to `path` so that a reader sees the old file or the whole new one, never a
    part (a temporary name beside it, then a rename). `durable` also flushes it to the disk
    first, for files another machine acts on (a worker's result on shared storage)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w") as handle:
        handle.write(text)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(partial, path)
