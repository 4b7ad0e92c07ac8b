"""Global model versions on disk: one complete bundle directory per version, written atomically.

``DATA_DIR/versions/<v>/`` holds the bundle files (graphs, tokenizer and counts hard-linked from
the parent, so they cost no space), the version's ``weights.safetensors``, ``manifest.json`` with
``model_version``/``parent_version`` and every file's sha256, and ``server_state.safetensors``
(the server optimizer's moments, never served). Each is written into ``versions/.tmp-*`` and
renamed into place, so a crash leaves either the whole version or a temp dir that
``remove_temps`` deletes. The database, not the directory listing, says which versions exist; a
version directory it does not know is never deleted (``server.recovery``). Files are verified
against their sha256 before they are served (``intact``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from formats import durable
from formats import tensors as tensor_codec
from formats.bundle import (
    MANIFEST,
    check_parameters,
    load_bundle,
    sha256_file,
    upgrade_manifest,
)

WEIGHTS = "weights.safetensors"
SERVER_STATE = "server_state.safetensors"
TMP_PREFIX = ".tmp-"
CHECKED_FILES = 4096  # (path, mtime, size) -> verdict entries kept by ``intact``


def iso(timestamp: float) -> str:
    """ISO 8601 UTC with a Z, to the second."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class VersionStore:
    """Reads and atomically writes the version directories under DATA_DIR/versions."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "versions"
        self.root.mkdir(parents=True, exist_ok=True)
        self._checked: OrderedDict[tuple, bool] = OrderedDict()  # (path, sha, mtime_ns, size) -> intact
        self._lock = threading.Lock()

    def path(self, version: int) -> Path:
        """Directory of a version."""
        return self.root / str(version)

    def relative(self, version: int, name: str) -> str:
        """A version's file as a path relative to DATA_DIR (what the files table stores)."""
        return str((self.path(version) / name).relative_to(self.data_dir))

    def _publish(self, version: int, fill) -> dict:
        """Create a temp dir, let fill(tmp) write the files and return the manifest, rename it in."""
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f"{TMP_PREFIX}{version}-"))
        try:
            manifest = fill(tmp)
            durable.write_json(tmp / MANIFEST, manifest)  # manifest last, as fedurl-export does
            durable.fsync_dir(tmp)
            os.rename(tmp, self.path(version))  # fails if the version exists: never overwrite
            durable.fsync_dir(self.root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return manifest

    def import_bundle(self, source: Path) -> dict:
        """Copy a verified bundle in as its manifest's model_version; return the manifest."""
        bundle = load_bundle(source)
        bundle.load_weights()  # refuse weights that disagree with the manifest before serving them

        def fill(tmp: Path) -> dict:
            """Copy every bundle file (counts.bin too, where the bundle has one)."""
            for name in bundle.manifest["files"]:
                shutil.copyfile(bundle.path(name), tmp / name)
            return bundle.manifest

        return self._publish(int(bundle.manifest["model_version"]), fill)

    def write(self, parent: dict, version: int, weights: dict, state: dict, extra: dict,
              now: float) -> dict:
        """Publish a new version: parent's graphs, tokenizer and counts, new weights and optimizer state.

        :param parent: the parent version's manifest.
        :param extra: recorded in the manifest under "aggregation" (round, clients, optimizer...).
        """
        parent_dir = self.path(parent["model_version"])
        ordered = {p["name"]: weights[p["name"]] for p in parent["parameters"]}
        check_parameters(parent, ordered)
        blob = tensor_codec.encode(ordered)

        def fill(tmp: Path) -> dict:
            """Link the parent's other files, write weights and state, build the manifest."""
            for name in parent["files"]:
                if name != WEIGHTS:
                    os.link(parent_dir / name, tmp / name)
            durable.write_bytes(tmp / WEIGHTS, blob)
            durable.write_bytes(tmp / SERVER_STATE, tensor_codec.encode(state))
            files = dict(parent["files"])
            files[WEIGHTS] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
            return {**parent, "model_version": version, "parent_version": parent["model_version"],
                    "created": iso(now), "files": files, "aggregation": extra}

        return self._publish(version, fill)

    def manifest(self, version: int) -> dict:
        """A version's manifest."""
        # versions stored before the manifest described the recurrent state get the GRU's description
        return upgrade_manifest(json.loads((self.path(version) / MANIFEST).read_text()))

    def weights(self, version: int) -> dict[str, np.ndarray]:
        """A version's weights, writable copies; every file's sha256 and the weights' names and
        shapes are checked against its manifest first (a corrupt version is never served).
        """
        bundle = load_bundle(self.path(version))
        return {name: np.array(array) for name, array in bundle.load_weights().items()}

    def optimizer_state(self, version: int) -> dict[str, np.ndarray]:
        """The optimizer state saved with a version (empty for an imported bundle)."""
        path = self.path(version) / SERVER_STATE
        return {n: np.array(a) for n, a in tensor_codec.load(path)[0].items()} if path.exists() else {}

    def listing(self) -> tuple[list[int], list[str]]:
        """(version numbers of the directories under versions/, every other entry's name)."""
        names = [entry.name for entry in self.root.iterdir()]
        return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if not n.isdigit())

    def remove_temps(self) -> list[str]:
        """Delete half-written temp dirs (a crash mid-write); they never were a version."""
        removed = []
        for entry in self.root.iterdir():
            if entry.name.startswith(TMP_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed

    def intact(self, relative: str, sha256: str) -> bool:
        """Whether a file under DATA_DIR still hashes to sha256.

        Each verdict is kept per (path, mtime, size), so a file is hashed once until it changes.
        """
        path = self.data_dir / relative
        try:
            stat = path.stat()
        except OSError:
            return False
        key = (relative, sha256, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._checked:
                self._checked.move_to_end(key)
                return self._checked[key]
        verdict = sha256_file(path) == sha256
        with self._lock:
            self._checked[key] = verdict
            while len(self._checked) > CHECKED_FILES:
                self._checked.popitem(last=False)
        return verdict
