"""Durable writes: what a crash at any instant cannot leave half-written.

A file is written to a temp name in its own directory, flushed and fsynced, renamed over its
final name, and the directory is fsynced so the rename itself survives a power cut. Every writer
of bundles, versions, spool bodies and manifests goes through here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Fsync a directory so a rename or a new entry inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_with(path: Path, write: Callable[[BinaryIO], object], mode: int = 0o644) -> None:
    """Let write(handle) fill a temp file beside path, fsync it, rename it over path, fsync the dir.

    :param mode: permissions of the result (mkstemp makes 0600; bundles are served and shared).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    """Write bytes durably and atomically."""
    write_with(path, lambda handle: handle.write(data))


def write_json(path: Path, document: dict) -> None:
    """Write an indented JSON document durably and atomically."""
    write_bytes(path, (json.dumps(document, indent=2) + "\n").encode())
