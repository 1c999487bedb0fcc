"""Atomic writes for privzoo's own outputs (model cards, demo results, converted folders).

A reader (or a crash, a full disk, a second process) sees either the old file or the complete new one,
never a truncated mix: the data goes to a temporary file in the same folder, is flushed to disk, then
``os.replace`` renames it over the target (atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_dir", "atomic_open", "atomic_write_bytes", "atomic_write_text"]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open(path, mode)`` whose content replaces ``path`` only when the block exits without error.

    Args:
        path: Target file (its folder is created).
        mode: ``"w"`` or ``"wb"``.
        **kwargs: Passed to ``open`` (``encoding``, ``newline``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.copymode(path, tmp)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(
    path: str | os.PathLike, text: str, encoding: str = "utf-8", newline: str | None = None
) -> None:
    """Write ``text`` to ``path`` atomically (``newline="" ``: no newline translation)."""
    with atomic_open(path, "w", encoding=encoding, newline=newline) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling folder to fill; on success its files land in ``path``, on error nothing does.

    A new ``path`` appears at once (one rename of the folder); into an existing ``path`` each file is moved
    with ``os.replace`` (files already there and not written are kept).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
            return
        for item in sorted(tmp.iterdir()):
            os.replace(item, path / item.name)
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
