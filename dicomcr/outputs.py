"""Writing files safely: output paths checked before the work (a bad path costs nothing), atomic
and durable writes, and a full disk told apart from other errors (a retry later, not a failure)."""

from __future__ import annotations

import errno
import os
import shutil
import threading
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


def partial_name(path: Path) -> Path:
    """A temporary name beside `path`, unique to this process and thread, for a write that is
    renamed into place when whole (two writers of one file never share it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")


def write_text_atomically(path: Path, text: str, durable: bool = False) -> None:
    """Write `text` to `path` so that a reader sees the old file or the whole new one, never a
    part (a temporary name beside it, then a rename). `durable` also flushes it to the disk
    first, for files another machine acts on (a worker's result on shared storage)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_name(path)
    with open(partial, "w") as handle:
        handle.write(text)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(partial, path)


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from, says the disk (or the user's quota) is
    full: a retry later, not a failure. (pydicom re-raises a write error as a new OSError without
    its errno, from the original; the job store's StoreFull is an OSError with ENOSPC.)"""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def disk_full_said_plainly(exc: BaseException) -> BaseException:
    """For a worker process to raise: a full disk as a plain OSError(ENOSPC), because a process
    pool sends an exception back without the errors it was raised from; anything else as is."""
    if is_disk_full(exc) and not (isinstance(exc, OSError) and exc.errno is not None):
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({first})")
    return exc


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def move_durably(source: Path, destination: Path) -> None:
    """fsync `source`, rename it to `destination`, fsync the folder: on disk before we say so.
    Both on one file system, so the rename moves no bytes."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(source, destination)
    fsync_folder(destination.parent)


def place_durably(source: Path, target: Path) -> None:
    """Put `source` at `target` atomically and durably: a hard link when on the same file system
    (no bytes copied), else a copy; flushed, renamed over any earlier file, the folder flushed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_name(target)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, target)
    fsync_folder(target.parent)
