"""Files that hold keys and certificates: written whole or not at all, with their mode from the
first byte, and synced so that a rename or link survives a crash."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: Path, data: bytes, *, mode: int, replace: bool) -> None:
    """Put ``data`` at ``path`` with ``mode``: written and synced to a temporary file beside it,
    then renamed over ``path`` (``replace``) or linked to it, so that exactly one of several
    racing writers wins (FileExistsError for the others). Other failures raise OSError."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sync_directory(path.parent)


@contextlib.contextmanager
def replacing(path: Path, *, mode: int) -> Iterator[BinaryIO]:
    """A new file for ``path``, too large to hold in memory: written through the handle yielded
    to a temporary file beside it (created with ``mode``), then synced and renamed over
    ``path``. A link at ``path`` is replaced, never written through; when the block raises,
    ``path`` is left as it was. Failures raise OSError."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make a rename or link in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
