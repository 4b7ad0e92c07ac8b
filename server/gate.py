"""The publish gate: a candidate version is scored on a public validation set before it is published.

``fedurl-export`` writes ``validation.txt`` into the bundle (URLs held out of the *export corpus*,
never user data) and names it in the manifest under ``validation`` with its sha256. On first
start the server copies it into DATA_DIR (checked against that sha256), so every later version,
whose manifest inherits the entry, is scored on the same URLs. The score is the token-weighted
mean loss of ``train_step.onnx`` at lr 0 (``runtime.trainer.LocalTrainer.mean_loss``): the same
graph the clients train with, in onnxruntime.

What it catches and what it cannot (docs/SECURITY.md): a round that makes the model worse on
public URLs (an anti-gradient, a model-replacement that wrecks it, numerical blow-up) is refused
and the parent stays current. A targeted backdoor (one host after one prefix) barely moves the
mean loss on public URLs, so it passes: the gate is a floor, not a detector.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from formats import durable
from formats.bundle import load_bundle
from runtime.trainer import LocalTrainer, Rows
from server.rounds import Verdict
from server.versions import VersionStore

VALIDATION_FILE = "validation.txt"


def validation_urls(data_dir: Path, manifest: dict, bundle_dir: str | None) -> list[str] | None:
    """The public validation URLs of this federation, or None if its bundle has none.

    The first start copies the file from the bundle into data_dir; every start checks it against
    the manifest's sha256. :raise RuntimeError: if the copy does not match.
    """
    entry = manifest.get("validation")
    if not isinstance(entry, dict) or "sha256" not in entry:
        return None
    kept = Path(data_dir) / VALIDATION_FILE
    if not kept.is_file():
        source = Path(bundle_dir or "") / entry.get("file", VALIDATION_FILE)
        if not bundle_dir or not source.is_file():
            return None
        durable.write_bytes(kept, source.read_bytes())
    data = kept.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise RuntimeError(f"{kept} does not match the manifest's validation sha256; "
                           "restore it from the bundle")
    return [line for line in data.decode().splitlines() if line]


class ValidationGate:
    """Refuse a candidate whose validation loss exceeds its parent's by more than ``tolerance``
    (relative), or is not finite. Callable as the coordinator's ``gate``.
    """

    def __init__(self, store: VersionStore, urls: list[str], tolerance: float, threads: int = 1):
        assert urls, "a validation set needs URLs"
        self.store, self.urls, self.tolerance, self.threads = store, urls, tolerance, threads
        self._trainers: dict[str, tuple[LocalTrainer, Rows]] = {}  # train_step sha256 -> trainer, rows
        self._losses: dict[int, float] = {}  # version -> validation loss (versions never change)

    def _trainer(self, version: int) -> tuple[LocalTrainer, Rows]:
        """The training graph of a version (shared by versions with the same graph), and the rows."""
        bundle = load_bundle(self.store.path(version), verify=False)
        key = bundle.manifest["files"]["train_step.onnx"]["sha256"]
        if key not in self._trainers:
            trainer = LocalTrainer(bundle, threads=self.threads)
            self._trainers[key] = (trainer, trainer.rows(self.urls))
        return self._trainers[key]

    def loss(self, version: int, weights: dict | None = None) -> float:
        """Validation loss of a version's weights, or of candidate weights on that version's graph."""
        if weights is None and version in self._losses:
            return self._losses[version]
        trainer, rows = self._trainer(version)
        chosen = weights if weights is not None else self.store.weights(version)
        value = trainer.mean_loss({k: np.asarray(v, dtype=np.float32) for k, v in chosen.items()}, rows)
        if weights is None:
            self._losses[version] = value
        return value

    def __call__(self, parent: int, weights: dict) -> Verdict:
        """Score the candidate against its parent."""
        before, after = self.loss(parent), self.loss(parent, weights)
        limit = before * (1.0 + self.tolerance)
        scores = {"parent_loss": round(before, 6), "candidate_loss": round(after, 6)}
        if not math.isfinite(after) or after > limit:
            return Verdict(False, f"validation loss {after:.4f} is above the parent's {before:.4f} + "
                                  f"{self.tolerance:.0%} (version {parent} stays current)", scores)
        return Verdict(True, f"validation loss {after:.4f} (parent {before:.4f})", scores)
