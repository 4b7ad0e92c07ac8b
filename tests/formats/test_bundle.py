"""Bundle integrity: manifest hashes match, tampering and wrong formats are refused clearly."""

import json
import shutil

import pytest

from formats.bundle import MANIFEST, BundleError, load_bundle, sha256_file


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path):
    return shutil.copytree(bundle_dir, tmp_path / "bundle")


def test_manifest_hashes_match_files(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert set(bundle.manifest["files"]) == {"tokenizer.model", "tokenizer.json", "weights.safetensors",
                                             "infer.onnx", "train_step.onnx"}
    for name, entry in bundle.manifest["files"].items():
        assert sha256_file(bundle.path(name)) == entry["sha256"]
        assert bundle.path(name).stat().st_size == entry["bytes"]


def test_manifest_names_every_parameter_and_graph_io(bundle_dir):
    manifest = load_bundle(bundle_dir).manifest
    names = [p["name"] for p in manifest["parameters"]]
    train = manifest["graphs"]["train_step"]
    assert [i["name"] for i in train["inputs"]] == ["tokens", "targets", "mask", "lr", *names]
    assert [o["name"] for o in train["outputs"]] == ["loss", *train["parameter_outputs"].values()]
    assert [i["name"] for i in manifest["graphs"]["infer"]["inputs"]] == ["tokens", "state", *names]


def test_tampered_file_is_refused(bundle_copy):
    weights = bundle_copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="weights.safetensors is corrupt or was modified"):
        load_bundle(bundle_copy)


def test_missing_file_and_missing_manifest_are_refused(bundle_copy, tmp_path):
    (bundle_copy / "infer.onnx").unlink()
    with pytest.raises(BundleError, match="infer.onnx is missing"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="manifest.json not found"):
        load_bundle(tmp_path / "nowhere")


def test_unknown_format_version_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["format_version"] = 99
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version 99"):
        load_bundle(bundle_copy)
