"""python -m model.regraph: a bundle's graphs re-exported from its own weights, nothing else moved."""

import json
import shutil

from formats.bundle import MANIFEST, load_bundle, sha256_file
from model import regraph


def test_a_stale_train_graph_is_re_exported_and_the_rest_kept(bundle_dir, tmp_path, capsys):
    """A bundle whose train_step.onnx computes something else gets the current one back; infer.onnx,
    whose computation did not change, keeps its bytes; the manifest ends as the exporter wrote it."""
    # Prepare: a consistent bundle (sha256s match) whose training graph is stale
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    fresh_manifest = json.loads((bundle / MANIFEST).read_text())
    shutil.copy(bundle / "infer.onnx", bundle / "train_step.onnx")
    stale = json.loads((bundle / MANIFEST).read_text())
    stale["files"]["train_step.onnx"]["sha256"] = sha256_file(bundle / "train_step.onnx")
    stale["files"]["train_step.onnx"]["bytes"] = (bundle / "train_step.onnx").stat().st_size
    (bundle / MANIFEST).write_text(json.dumps(stale))
    # Execute
    regraph.main([str(bundle)])
    # Assert
    assert capsys.readouterr().out.strip().endswith("rewrote train_step.onnx")
    for name in ("infer.onnx", "weights.safetensors", "tokenizer.model", "validation.txt"):
        assert (bundle / name).read_bytes() == (bundle_dir / name).read_bytes(), name
    manifest = load_bundle(bundle).manifest  # every sha256 checked
    assert manifest["graphs"] == fresh_manifest["graphs"]
    assert {k: v for k, v in json.loads((bundle / MANIFEST).read_text()).items() if k != "files"} == \
        {k: v for k, v in fresh_manifest.items() if k != "files"}
    assert regraph._computation(bundle / "train_step.onnx") == \
        regraph._computation(bundle_dir / "train_step.onnx")
