"""Bundle integrity: manifest hashes match, tampering and wrong formats are refused clearly."""

import copy
import json
import shutil

import numpy as np
import pytest

from formats.bundle import MANIFEST, BundleError, StateSpec, load_bundle, sha256_file, upgrade_manifest


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path):
    return shutil.copytree(bundle_dir, tmp_path / "bundle")


def test_manifest_hashes_match_files(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert set(bundle.manifest["files"]) == {"tokenizer.model", "tokenizer.json", "weights.safetensors",
                                             "infer.onnx", "train_step.onnx", "counts.bin"}
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


def test_manifest_describes_the_infer_state(bundle_dir):
    """The state section names the graph's state input and output and matches their shapes."""
    manifest = load_bundle(bundle_dir).manifest
    infer, config = manifest["graphs"]["infer"], manifest["config"]
    spec = StateSpec.from_manifest(manifest)
    assert spec == StateSpec("state", "new_state", (config["n_layer"], "batch", config["n_hidden"]), 1,
                             "float32", "zeros")
    graph_io = {value["name"]: value for value in infer["inputs"] + infer["outputs"]}
    for name in (spec.input, spec.output):
        assert (tuple(graph_io[name]["shape"]), graph_io[name]["dtype"]) == (spec.shape, spec.dtype)
    assert "state_input" not in infer and "state_output" not in infer, "one source for the state's names"


def _manifest_with_state(**state) -> dict:
    base = {"input": "s", "output": "s2", "shape": [2, "batch", 3], "batch_axis": 1, "dtype": "float32",
            "init": "zeros"}
    return {"graphs": {"infer": {"state": {**base, **state}}}}


@pytest.mark.parametrize("state, message", [
    ({"shape": [2, 4, 3]}, "batch"),
    ({"batch_axis": 0}, "batch"),
    ({"batch_axis": 3}, "batch"),
    ({"shape": [0, "batch", 3]}, "positive"),
    ({"shape": [2.5, "batch", 3]}, "positive"),
    ({"dtype": "float64"}, "supports dtype"),
    ({"init": "random"}, "supports dtype"),
    ({"extra": 1}, "exactly"),
])
def test_state_descriptions_completers_cannot_hold_are_refused(state, message):
    with pytest.raises(BundleError, match=message):
        StateSpec.from_manifest(_manifest_with_state(**state))


def test_missing_state_is_refused():
    with pytest.raises(BundleError, match="graphs.infer.state"):
        StateSpec.from_manifest({"graphs": {"infer": {}}})


@pytest.mark.parametrize("shape, axis", [(["batch", 2, 3], 0), ([2, "batch", 3], 1), ([2, 3, "batch"], 2),
                                         (["batch"], 0)])
def test_state_rows_join_and_split_along_the_batch_axis(shape, axis):
    """Whatever the layout: initial states are zeros, join stacks rows in order, row takes one back."""
    # Prepare
    spec = StateSpec.from_manifest(_manifest_with_state(shape=shape, batch_axis=axis))
    rng = np.random.default_rng(0)
    rows = [rng.normal(size=spec.dims(1)).astype(np.float32) for _ in range(3)]
    # Execute
    joined = spec.join(rows)
    # Assert
    assert spec.initial(4).shape == spec.dims(4) and not spec.initial(4).any()
    assert spec.initial(4).dtype == np.float32 and joined.shape == spec.dims(3)
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(spec.row(joined, i), row)


def test_a_manifest_from_before_the_state_section_is_upgraded(bundle_copy):
    """Format-1 manifests with state_input/state_output load with the GRU's state section."""
    # Prepare
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    current = copy.deepcopy(manifest["graphs"]["infer"]["state"])
    legacy = manifest["graphs"]["infer"]
    del legacy["state"]
    legacy.update(state_input=current["input"], state_output=current["output"])
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    # Execute
    bundle = load_bundle(bundle_copy)
    # Assert
    assert bundle.manifest["graphs"]["infer"]["state"] == current
    assert "state_input" not in bundle.manifest["graphs"]["infer"]
    again = upgrade_manifest(copy.deepcopy(bundle.manifest))
    assert again == bundle.manifest, "upgrading twice changes nothing"


@pytest.mark.parametrize("name, message", [("../escape.bin", "plain name"), (".hidden", "plain name"),
                                           ("manifest.json", "plain name"), (None, "lists no infer.onnx")])
def test_a_manifest_naming_odd_or_too_few_files_is_refused(bundle_copy, name, message):
    """The server copies every listed file by name: none may leave the directory, none be missing."""
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    if name is None:
        del manifest["files"]["infer.onnx"]
    else:
        manifest["files"][name] = manifest["files"]["counts.bin"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy, verify=False)
