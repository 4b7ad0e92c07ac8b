"""A model bundle: one directory holding everything a client needs, described by manifest.json.

The manifest is the single source of names: graph input/output names, parameter names and
shapes, tokenizer special ids, and a sha256 per file. Clients (the browser worker, simulated
clients, the server) read names from it and never hard-code them. See docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from formats import tensors as tensor_codec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BUNDLE_FILES = ("tokenizer.model", "tokenizer.json", "weights.safetensors", "infer.onnx", "train_step.onnx")


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

    def load_weights(self) -> dict[str, np.ndarray]:
        """The global weights, checked against the manifest's names, shapes and dtypes."""
        arrays, _ = tensor_codec.load(self.path("weights.safetensors"))
        check_parameters(self.manifest, arrays)
        return arrays


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
    if verify:
        for name, entry in manifest["files"].items():
            path = directory / name
            if not path.is_file():
                raise BundleError(f"bundle file {name} is missing from {directory}")
            actual = sha256_file(path)
            if actual != entry["sha256"]:
                raise BundleError(f"bundle file {name} is corrupt or was modified: sha256 {actual[:12]}… "
                                  f"but the manifest says {entry['sha256'][:12]}…")
    return Bundle(directory, manifest)
