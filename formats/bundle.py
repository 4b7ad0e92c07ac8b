"""A model bundle: one directory holding everything a client needs, described by manifest.json.

The manifest is the single source of names: graph input/output names, parameter names and
shapes, tokenizer special ids, and a sha256 per file. Clients (the browser worker, simulated
clients, the server) read names from it and never hard-code them. See docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from formats import tensors as tensor_codec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BUNDLE_FILES = ("tokenizer.model", "tokenizer.json", "weights.safetensors", "infer.onnx", "train_step.onnx")
# completion.min_probability of a bundle without one: show every suggestion (the behaviour before it)
DEFAULT_MIN_PROBABILITY = 0.0


class BundleError(ValueError):
    """A bundle is missing, incomplete, tampered with, or of an unknown format."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(directory: Path, names=BUNDLE_FILES) -> dict:
    """The manifest's "files" section: name -> {sha256, bytes}."""
    return {name: {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}
            for name in names}


@dataclass
class Bundle:
    """A verified bundle on disk."""

    directory: Path
    manifest: dict

    def path(self, name: str) -> Path:
        """Path of one of the bundle's files."""
        return self.directory / name

    @property
    def parameter_names(self) -> list[str]:
        """Parameter names in graph-input order."""
        return [p["name"] for p in self.manifest["parameters"]]

    @property
    def state(self) -> StateSpec:
        """The recurrent state infer.onnx carries between calls."""
        return StateSpec.from_manifest(self.manifest)

    def load_weights(self) -> dict[str, np.ndarray]:
        """The global weights, checked against the manifest's names, shapes and dtypes."""
        arrays, _ = tensor_codec.load(self.path("weights.safetensors"))
        check_parameters(self.manifest, arrays)
        return arrays


STATE_DTYPES = ("float32",)  # what the completers can allocate (JS: Float32Array)
STATE_INITS = ("zeros",)
BATCH = "batch"  # the symbolic batch dimension in a state shape


@dataclass(frozen=True)
class StateSpec:
    """The recurrent state infer.onnx carries from one call to the next (manifest
    ``graphs.infer.state``, docs/FORMAT.md): the only thing completers know about it.

    A state for B rows has ``shape`` with ``"batch"`` replaced by B; row i is index i along
    ``batch_axis``; a fresh row holds ``init`` ("zeros").
    """

    input: str
    output: str
    shape: tuple[int | str, ...]
    batch_axis: int
    dtype: str
    init: str

    @classmethod
    def from_manifest(cls, manifest: dict) -> StateSpec:
        """The infer graph's state description, checked.

        :raise BundleError: if it is missing or describes a state completers cannot hold.
        """
        spec = manifest.get("graphs", {}).get("infer", {}).get("state")
        keys = {"input", "output", "shape", "batch_axis", "dtype", "init"}
        if not isinstance(spec, dict) or set(spec) != keys:
            raise BundleError(f"manifest graphs.infer.state must hold exactly {sorted(keys)}, got {spec!r}")
        shape, axis = spec["shape"], spec["batch_axis"]
        if not (isinstance(shape, list) and isinstance(axis, int) and 0 <= axis < len(shape)
                and shape[axis] == BATCH and all(type(d) is int and d > 0 for i, d in enumerate(shape)
                                                 if i != axis)):
            raise BundleError(f"state shape {shape!r} needs {BATCH!r} at batch_axis {axis!r} and "
                              "positive sizes elsewhere")
        if spec["dtype"] not in STATE_DTYPES or spec["init"] not in STATE_INITS:
            raise BundleError(f"state {spec['dtype']!r} initialised with {spec['init']!r}: this fedurl "
                              f"supports dtype {STATE_DTYPES} and init {STATE_INITS}")
        return cls(spec["input"], spec["output"], tuple(shape), axis, spec["dtype"], spec["init"])

    def dims(self, batch: int) -> tuple[int, ...]:
        """The concrete shape of a state for batch rows."""
        return tuple(batch if i == self.batch_axis else int(d) for i, d in enumerate(self.shape))

    def initial(self, batch: int) -> np.ndarray:
        """A fresh state for batch rows."""
        return np.zeros(self.dims(batch), dtype=self.dtype)

    def join(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """One state holding the given states' rows, in order."""
        return np.concatenate(rows, axis=self.batch_axis)

    def row(self, state: np.ndarray, index: int) -> np.ndarray:
        """Row index of a state, as a one-row state."""
        return np.take(state, [index], axis=self.batch_axis)


def upgrade_manifest(manifest: dict) -> dict:
    """A manifest with every section this fedurl reads (the same dict, changed in place).

    Format-1 manifests written before the state section get the one their GRU had:
    state_input/state_output, [n_layer, batch, n_hidden], zeros.
    """
    infer = manifest.get("graphs", {}).get("infer", {})
    if "state" not in infer and "state_input" in infer:
        config = manifest["config"]
        infer["state"] = {"input": infer.pop("state_input"), "output": infer.pop("state_output"),
                          "shape": [config["n_layer"], BATCH, config["n_hidden"]], "batch_axis": 1,
                          "dtype": "float32", "init": "zeros"}
    return manifest


def min_probability(manifest: dict) -> float:
    """The completers' threshold tau, ``completion.min_probability`` (docs/FORMAT.md), checked.

    :raise BundleError: unless it is a number in [0, 1] (a server's manifest can be wrong too).
    """
    section = manifest.get("completion", {})
    tau = section.get("min_probability", DEFAULT_MIN_PROBABILITY) if isinstance(section, dict) else None
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not 0 <= tau <= 1:
        raise BundleError(f"manifest completion.min_probability must be a number in [0, 1], got {tau!r}")
    return float(tau)


def check_parameters(manifest: dict, tensors: dict[str, np.ndarray]) -> None:
    """Raise BundleError unless tensors match the manifest's parameters exactly."""
    expected = {p["name"]: (tuple(p["shape"]), p["dtype"]) for p in manifest["parameters"]}
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise BundleError(f"weights do not match the manifest: missing {missing}, unexpected {extra}")
    for name, (shape, dtype) in expected.items():
        if tensors[name].shape != shape or tensors[name].dtype.name != dtype:
            raise BundleError(f"parameter {name}: got {tensors[name].dtype.name}{list(tensors[name].shape)}, "
                              f"manifest says {dtype}{list(shape)}")


def load_bundle(directory, verify: bool = True) -> Bundle:
    """Open a bundle directory, checking its format version and (by default) every sha256.

    :raise BundleError: with the file and the reason, if anything is off.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{directory} is not a model bundle: {MANIFEST} not found "
                          f"(create one with `fedurl-export --out {directory}`)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{manifest_path}: format_version {manifest.get('format_version')!r}, "
                          f"this fedurl reads {FORMAT_VERSION}")
    files = manifest.get("files", {})
    if missing := sorted(set(BUNDLE_FILES) - set(files)):
        raise BundleError(f"{manifest_path} lists no {', '.join(missing)}")
    if odd := [name for name in files if "/" in name or "\\" in name or name.startswith(".")
               or name == MANIFEST]:
        raise BundleError(f"{manifest_path} lists {odd[0]!r}: a bundle file is a plain name in its directory")
    if verify:
        for name, entry in manifest["files"].items():
            path = directory / name
            if not path.is_file():
                raise BundleError(f"bundle file {name} is missing from {directory}")
            actual = sha256_file(path)
            if actual != entry["sha256"]:
                raise BundleError(f"bundle file {name} is corrupt or was modified: sha256 {actual[:12]}… "
                                  f"but the manifest says {entry['sha256'][:12]}…")
    return Bundle(directory, upgrade_manifest(manifest))
