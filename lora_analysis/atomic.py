"""Atomic file output: write to a temporary file in the same folder, then ``os.replace``.

A reader (or a resumed sweep) never sees a half-written file: either the old content or the new.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def temporary_name(name: str, tag: str, kind: str) -> str:
    """``.<name>.<tag>.<kind>``, the name cut to 100 characters: a valid name of 255 bytes stays valid with it."""
    return f".{name[:100]}.{tag}.{kind}"


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer creates the file itself, so it gets the usual permissions (mkstemp's would be 0600).
    tmp = path.parent / temporary_name(path.name, uuid.uuid4().hex, "tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            from lora_analysis.errors import LoraAnalysisError

            raise LoraAnalysisError(f"no space left on the device writing {path} (nothing torn was left; free some "
                                    "and run the command again)") from error
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda p: p.write_bytes(data))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(path: str | Path, frame: Any) -> Path:
    """Write a pandas DataFrame as Parquet (pyarrow), atomically."""
    return write_atomic(path, lambda p: frame.to_parquet(p, index=False))


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def try_lock(path: str | Path) -> Iterator[int | None]:
    """Try to hold an exclusive lock on ``path`` without waiting; yield who holds it.

    Yields None when this process holds the lock (its pid is written into the file; when the block ends
    the file is removed and the lock released), else the pid the holder wrote (0 when not written yet).
    The lock is ``flock``'s: it goes with its holder's death, so a stale file never blocks. A waiter that
    locked a file its holder removed meanwhile locks the new one instead (two holders are never possible).
    """
    path = Path(path)
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # its folder was removed (a refused run) between our mkdir and open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _written_pid(fd)
            os.close(fd)
            break
        if _is_file_of(fd, path):
            holder = None
            break
        os.close(fd)  # removed (or replaced) by its holder between our open and our lock: try again
    if holder is not None:
        yield holder
        return
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield None
    finally:
        if _is_file_of(fd, path):
            path.unlink()  # before the release: a waiter that opened it sees it gone and retries
        os.close(fd)


def _written_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    except (OSError, ValueError):
        return 0


def _is_file_of(fd: int, path: Path) -> bool:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (status.st_dev, status.st_ino) == (opened.st_dev, opened.st_ino)


def check_output_folder(folder: str | Path, kind: str, owns: Callable[[Path], bool]) -> None:
    """Raise ``LoraAnalysisError`` unless ``replaced_folder(folder, kind, owns)`` could write there.

    Called before long work, so an output path that is a file, a folder holding files the toolkit did not
    write (``owned.check_ours``) or not writable is refused at once instead of after the work.
    """
    from lora_analysis.errors import LoraAnalysisError
    from lora_analysis.owned import check_ours

    folder = Path(folder)
    check_ours(folder, kind, owns, "choose another output folder")
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise LoraAnalysisError(f"cannot write {folder}: {parent} is not a writable folder")


@contextlib.contextmanager
def replaced_folder(folder: str | Path, kind: str, owns: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``folder``; when the block succeeds it becomes ``folder``.

    A folder is written as one unit: a reader sees the old folder or the new one, never a mix, whatever
    files the block writes. An existing ``folder`` is replaced only when ``owns`` recognises every entry
    of it as the toolkit's (else nothing is touched); a failed block leaves the old folder as it was.
    """
    folder = Path(folder)
    check_output_folder(folder, kind, owns)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex
    tmp, old = (folder.parent / temporary_name(folder.name, tag, kind) for kind in ("tmp", "old"))
    tmp.mkdir()
    try:
        yield tmp
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
