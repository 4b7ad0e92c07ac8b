"""Start-up: reconcile the data dir with the database, import the first model, replay the open round.

The database says what exists; the disk may hold more after a crash (a version directory renamed
into place whose row never committed, spool bodies whose update never committed). These
functions run once, before the server answers anything, and are called by
``Coordinator.start`` in this order: ``known_versions``, ``import_first_version`` (first start
only), ``check_same_graphs``, then ``replay`` for the open round (also after every publish).
"""

from __future__ import annotations

from pathlib import Path

from formats.bundle import load_bundle
from server import db, logs
from server.spool import Spool
from server.strategies import Aggregator
from server.validation import as_float32, decode_payload
from server.versions import VersionStore

GRAPH_FILES = ("infer.onnx", "train_step.onnx", "tokenizer.json")


def known_versions(engine: db.Engine, store: VersionStore) -> dict[int, int | None]:
    """The recorded versions and their parents, after removing version debris on disk."""
    with db.transaction(engine) as conn:
        parents = db.version_parents(conn)
    removed = store.sweep(set(parents))
    if removed:
        logs.event("swept_debris", entries=removed)
    return parents


def import_first_version(engine: db.Engine, store: VersionStore, bundle_dir: str | None, now: float,
                         deadline_s: float) -> dict[int, int | None]:
    """Copy the initial bundle in, record it and open the first round; return {version: None}."""
    if bundle_dir is None:
        raise RuntimeError("no global model yet: start with --bundle DIR (or BUNDLE_DIR)")
    manifest = store.import_bundle(Path(bundle_dir))
    version = int(manifest["model_version"])
    files = [(entry["sha256"], name, store.relative(version, name))
             for name, entry in manifest["files"].items()]
    with db.transaction(engine) as conn:
        db.record_version(conn, version, None, "initial", None, now, files)
        db.open_round(conn, version, now, now + deadline_s)
    logs.event("imported_bundle", source=str(bundle_dir), version=version)
    return {version: None}


def check_same_graphs(data_dir: Path, manifest: dict, bundle_dir: str | None) -> None:
    """Refuse to serve a data dir that was started from a different model's graphs."""
    if bundle_dir is None:
        return
    wanted = load_bundle(bundle_dir, verify=False).manifest["files"]
    for name in GRAPH_FILES:
        if wanted[name]["sha256"] != manifest["files"][name]["sha256"]:
            raise RuntimeError(f"{data_dir} holds a model with a different {name} than "
                               f"{bundle_dir}; use another data dir for a new model")


def replay(engine: db.Engine, spool: Spool, aggregator: Aggregator) -> tuple[db.Round, list[db.StoredUpdate]]:
    """Feed the open round's stored deltas to a started aggregator; drop every other body.

    :return: the open round and the updates that were replayed, in arrival order.
    """
    with db.transaction(engine) as conn:
        current = db.current_round(conn)
        stored = db.round_updates(conn, current.id)
    for update in stored:  # one body in memory at a time
        tensors, _ = decode_payload(spool.read(current.id, update.key))
        aggregator.accumulate({name: as_float32(array) for name, array in tensors.items()}, update.weight)
    removed = spool.sweep(current.id, {update.key for update in stored})
    if removed:
        logs.event("swept_spool", entries=removed[:20], count=len(removed))
    return current, stored
