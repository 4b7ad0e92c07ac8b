"""Start-up: reconcile the data dir with the database, import the first model, replay the open round.

The database says what exists; the disk may hold more after a crash, or disagree after a mistake.
These functions run before the server answers anything, called by ``Coordinator.start`` in this
order: ``known_versions``, ``import_first_version`` (first start only), ``check_same_graphs``,
then ``replay`` for the open round (also after every publish). Nothing the database does not
know is deleted: half-written temp dirs aside, what cannot be used is refused or moved to
``DATA_DIR/quarantine`` (``server.quarantine``) and recorded.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

from formats.bundle import load_bundle
from server import db, logs, quarantine
from server.spool import Spool
from server.strategies import Aggregator
from server.validation import check_delta, decode_stored
from server.versions import WEIGHTS, VersionStore

GRAPH_FILES = ("infer.onnx", "train_step.onnx", "tokenizer.json")


Writing = Callable[[], AbstractContextManager[db.Connection]]  # a transaction: ``Coordinator.writing``


class BodyDamaged(ValueError):
    """A stored update body that is not what was accepted."""


def known_versions(writing: Writing, store: VersionStore, now: float) -> dict[int, int | None]:
    """The recorded versions and their parents, once the version directories agree with them.

    The one directory a crash can leave (version newest + 1, renamed into place before its row
    committed) is moved to quarantine. Any other unknown version means the database is not this
    data dir's (deleted, replaced, DATABASE_URL changed): start-up stops rather than lose it. The
    versions are read on the round lock's connection (writing): a worker whose lock was lost as
    it started fails there instead of taking the directory another worker is publishing for debris.
    :raise RuntimeError: with what to do, if the database does not know versions on disk.
    """
    with writing() as conn:
        parents, database = db.version_parents(conn), db.database_name(conn.engine)
    removed = store.remove_temps()
    if removed:
        logs.event("swept_debris", entries=removed)
    unknown = [v for v in store.listing()[0] if v not in parents]
    if not unknown:
        return parents
    newest = max(parents, default=None)
    if newest is None or unknown != [newest + 1]:
        recorded = f"versions {min(parents)}..{newest}" if parents else "no version"
        raise RuntimeError(
            f"{store.root} holds versions {unknown} that the database {database} does not "
            f"know (it records {recorded}). Refusing to start rather than lose them: point DATABASE_URL at "
            f"this data dir's database, or move {store.root} away to start a new federation.")
    moved = quarantine.move_aside(store.data_dir, store.path(unknown[0]), "versions")
    with writing() as conn:
        db.quarantine_version(conn, unknown[0], "written but never recorded (a crash mid-publish)", moved,
                              now)
    logs.event("version_quarantined", level=logging.WARNING, version=unknown[0], moved_to=moved)
    return parents


def import_first_version(engine: db.Engine, store: VersionStore, bundle_dir: str | None, now: float,
                         deadline_s: float, phase: str = "reporting") -> dict[int, int | None]:
    """Copy the initial bundle in, record it and open the first round; return {version: None}."""
    if bundle_dir is None:
        raise RuntimeError("no global model yet: start with --bundle DIR (or BUNDLE_DIR)")
    manifest = store.import_bundle(Path(bundle_dir))
    version = int(manifest["model_version"])
    files = [(entry["sha256"], name, store.relative(version, name))
             for name, entry in manifest["files"].items()]
    with db.transaction(engine) as conn:
        db.record_version(conn, version, None, "initial", None, now, files)
        db.open_round(conn, version, now, now + deadline_s, phase)
    logs.event("imported_bundle", source=str(bundle_dir), version=version)
    return {version: None}


def check_same_graphs(data_dir: Path, manifest: dict, bundle_dir: str | None) -> None:
    """Refuse to serve a data dir that was started from a different model's graphs, and warn when
    the bundle has other files the data dir does not serve (e.g. a counts.bin added since).
    """
    if bundle_dir is None:
        return
    wanted = load_bundle(bundle_dir, verify=False).manifest["files"]
    for name in GRAPH_FILES:
        if wanted[name]["sha256"] != manifest["files"][name]["sha256"]:
            raise RuntimeError(f"{data_dir} holds a model with a different {name} than "
                               f"{bundle_dir}; use another data dir for a new model")
    unserved = sorted(name for name, entry in wanted.items() if name != WEIGHTS
                      and manifest["files"].get(name, {}).get("sha256") != entry["sha256"])
    if unserved:
        logs.event("bundle_files_not_served", level=logging.WARNING, data_dir=str(data_dir),
                   bundle=str(bundle_dir), files=unserved,
                   advice="the data dir serves the files it started with; use another data dir for these")


def replay(writing: Writing, spool: Spool, aggregator: Aggregator, parameters: list[dict], max_norm: float,
           now: float, limit: int | None = None) -> tuple[db.Round, list[db.StoredUpdate]]:
    """Feed the open round's stored deltas to a started aggregator; drop every other body.

    Each body is checked as on arrival (checksum, format, names, shapes, finite, norm); one that
    fails, or is missing, is quarantined and leaves the round instead of stopping the server.
    The reads, the quarantines and the check before the sweep run in writing's transactions, on
    the round lock's connection: a worker whose lock was lost while it read the bodies back (no
    upload is held off any more, another worker may close the round and drop its bodies) then
    fails (``db.RoundLockLost``) instead of taking a closed round's updates for missing or
    deleting bodies it does not know of, such as those of the next round.
    :param limit: feed only the first this many sound deltas (a FedBuff buffer); the later ones are
        checked and kept all the same, for the next buffer.
    :return: the open round and the sound updates, in arrival order (the fed ones first).
    """
    with writing() as conn:
        current = db.current_round(conn)
        stored = db.round_updates(conn, current.id)
    kept: list[db.StoredUpdate] = []
    for update in stored:  # one body in memory at a time
        try:
            delta = _reread(spool, current.id, update, parameters, max_norm)
        except Exception as exc:  # whatever is wrong with it, this body cannot be trusted
            _quarantine(writing, spool, current.id, update, _reason(exc), now)
            continue
        if limit is None or len(kept) < limit:
            aggregator.accumulate(delta, update.weight)
        kept.append(update)
    with writing() as conn:  # the lock is still held: no upload is placing a body meanwhile
        if db.current_round(conn).id != current.id:
            raise db.RoundLockLost(f"round {current.id} was ended by another worker; nothing was swept")
        removed = spool.sweep(current.id, {update.key for update in kept})
    if removed:
        logs.event("swept_spool", entries=removed[:20], count=len(removed))
    return current, kept


def _reread(spool: Spool, round_id: int, update: db.StoredUpdate, parameters: list[dict],
            max_norm: float) -> dict[str, np.ndarray]:
    """One stored body, verified against its row and validated again like a new upload."""
    body = spool.read(round_id, update.key)
    if update.sha256 is not None and hashlib.sha256(body).hexdigest() != update.sha256:
        raise BodyDamaged("checksum mismatch: the stored body changed after it was accepted")
    tensors, metadata = decode_stored(body)
    if db.ticket_digest(metadata.get("ticket", "")) != update.key:
        raise BodyDamaged("the body's ticket is not its row's")
    return check_delta(tensors, parameters, max_norm)[0]


def _reason(exc: Exception) -> str:
    """A short why for the log and the quarantine row."""
    if isinstance(exc, FileNotFoundError):
        return "missing: the body file is gone"
    code = getattr(exc, "code", None)
    return f"{code}: {exc}" if isinstance(code, str) else f"{type(exc).__name__}: {exc}"


def _quarantine(writing: Writing, spool: Spool, round_id: int, update: db.StoredUpdate, reason: str,
                now: float) -> None:
    """Move a body aside (if there is one) and its row out of the round, then log at ERROR."""
    path = spool.path(round_id, update.key)
    moved = quarantine.move_aside(spool.data_dir, path, f"spool/{round_id}") if path.exists() else None
    with writing() as conn:
        db.quarantine_update(conn, round_id, update.key, reason, moved, now)
    logs.event("update_quarantined", level=logging.ERROR, round=round_id, update=update.key[:16],
               reason=reason, moved_to=moved)
