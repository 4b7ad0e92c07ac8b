"""Accepted update bodies on disk until their round closes: ``DATA_DIR/spool/<round>/<digest>.st``.

The database holds each update's metadata; its delta bytes go here in two steps. ``stage`` writes
(or, behind fedurl-deploy's nginx, ``stage_file`` hard-links nginx's file of it) and fsyncs the
body under a fresh name in ``spool/incoming`` before the upload takes any lock or
opens its transaction (the 1 MB write and its fsync are most of an upload's time, and no longer
hold up other uploads); ``place`` renames it to its final name and fsyncs the directory inside the
update's transaction, *before* the commit, so a committed update always has its file. A staged
body is never written over an accepted one (a reused ticket's body stays staged and is deleted).
A crash between the rename and the commit leaves a file without a row, which ``sweep`` removes
(as it removes the directories of rounds that already closed, and staged files older than
``STAGED_TTL_S``: younger ones may belong to an upload in flight on another worker). Bulk bytes
stay out of the database because SQLite writes a 2 MB blob page by page into its journal and then
again into the database file, about six times slower than one sequential write and fsync.
"""

from __future__ import annotations

import mmap
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from formats import durable
from formats import tensors as tensor_codec
from server.validation import float32_delta, float32_deltas

SUFFIX = ".st"
INCOMING = "incoming"  # staged bodies, not yet any round's
STAGED_TTL_S = 3600.0  # an upload places its staged body within seconds; an older one is crash debris


class Spool:
    """The per-round directories of stored update bodies."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "spool"
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming = self.root / INCOMING
        self.incoming.mkdir(exist_ok=True)

    def path(self, round_id: int, key: str) -> Path:
        """Where one update's body lives."""
        return self.root / str(round_id) / f"{key}{SUFFIX}"

    def stage(self, body: bytes | mmap.mmap) -> Path:
        """Write body to a fresh file in the incoming directory and fsync it; return its path."""
        fd, name = tempfile.mkstemp(dir=self.incoming, suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        return Path(name)

    def stage_file(self, fd: int, body: bytes | mmap.mmap) -> Path:
        """Stage a body the front already wrote to a file, given the app's open descriptor of that
        file and the bytes read from it: a hard link of that very file (same file system; never
        whatever its name points to by now), else a copy of body; fsynced (the front never fsyncs).
        The front deletes its own name when the request ends, or at once when the client went
        away, which leaves the link nothing to name: the bytes are written then. Return its path.
        """
        staged = self.incoming / f"{secrets.token_hex(16)}.tmp"
        folder = os.open(self.incoming, os.O_RDONLY | os.O_DIRECTORY)
        try:  # a dst_dir_fd makes CPython call linkat(AT_SYMLINK_FOLLOW): the file, not /proc's link
            os.link(f"/proc/self/fd/{fd}", staged.name, dst_dir_fd=folder, follow_symlinks=True)
        except OSError:  # ENOENT: the front deleted it; EXDEV: another file system; no /proc
            return self.stage(body)
        finally:
            os.close(folder)
        fd = os.open(staged, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return staged

    def place(self, staged: Path, round_id: int, key: str) -> None:
        """Move a staged body to its final name and make the rename durable (fsync the directory)."""
        path = self.path(round_id, key)
        path.parent.mkdir(exist_ok=True)
        os.replace(staged, path)
        durable.fsync_dir(path.parent)
        # the directory's own entry, new with the round's first body (maybe another worker's, not
        # yet fsynced): nothing else changes in the root, so this costs nothing once it is durable
        durable.fsync_dir(self.root)

    def read(self, round_id: int, key: str) -> bytes:
        """One stored body."""
        return self.path(round_id, key).read_bytes()

    def column(self, round_id: int, keys: list[str], name: str) -> np.ndarray:
        """Tensor ``name`` of each listed body, stacked as float32: (len(keys), *shape).

        One body is decoded at a time and only the one tensor is kept, so reading a whole round
        back costs updates x one parameter of memory.
        """
        return np.stack([float32_delta(tensor_codec.decode(self.read(round_id, key))[0], name)
                         for key in keys])

    def deltas(self, round_id: int, keys: list[str]) -> RoundDeltas:
        """The listed bodies of a round as ``server.strategies.Deltas``."""
        return RoundDeltas(self, round_id, list(keys))

    def carry(self, from_round: int, to_round: int, keys: list[str]) -> None:
        """Hard-link bodies into another round's directory, durably (the rename of a FedBuff
        latecomer's row commits only after this): until the old directory is dropped, both
        rounds' directories name the same file, so a crash on either side of the commit finds it.
        """
        if not keys:
            return
        target = self.root / str(to_round)
        target.mkdir(exist_ok=True)
        for key in keys:
            destination = self.path(to_round, key)
            destination.unlink(missing_ok=True)  # left by an earlier close that failed before its commit
            os.link(self.path(from_round, key), destination)
        durable.fsync_dir(target)
        durable.fsync_dir(self.root)

    def drop_round(self, round_id: int) -> None:
        """Forget a finished round's bodies."""
        shutil.rmtree(self.root / str(round_id), ignore_errors=True)

    def sweep(self, open_round: int, keep: set[str]) -> list[str]:
        """Remove everything but the open round's files named in keep and the staged files of
        the last STAGED_TTL_S; return what went.
        """
        removed, now = [], time.time()  # file times are the wall clock's, whatever the server's clock
        for entry in self.incoming.iterdir():
            try:  # an upload in flight may remove its refused body meanwhile
                if entry.stat().st_mtime < now - STAGED_TTL_S:
                    entry.unlink()
                    removed.append(f"{INCOMING}/{entry.name}")
            except FileNotFoundError:
                continue
        for directory in self.root.iterdir():
            if directory.name == INCOMING:
                continue
            if directory.name != str(open_round):
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory.name)
                continue
            for entry in directory.iterdir():
                if entry.suffix != SUFFIX or entry.stem not in keep:
                    entry.unlink()
                    removed.append(f"{directory.name}/{entry.name}")
        return removed


class RoundDeltas:
    """One round's stored deltas, read back from the spool (``server.strategies.Deltas``)."""

    def __init__(self, spool: Spool, round_id: int, keys: list[str]):
        self.spool, self.round_id, self.keys = spool, round_id, keys

    def column(self, name: str) -> np.ndarray:
        """Every listed delta's tensor ``name``, stacked: (updates, *shape) float32."""
        return self.spool.column(self.round_id, self.keys, name)

    def each(self) -> Iterator[dict[str, np.ndarray]]:
        """Every listed delta as float32, one body read and decoded at a time."""
        for key in self.keys:
            yield float32_deltas(tensor_codec.decode(self.spool.read(self.round_id, key))[0])
