"""python -m model.regraph: a bundle's graphs re-exported from its own weights, nothing else moved."""

import json
import shutil

import torch

from formats.bundle import MANIFEST, load_bundle
from model import regraph
from model.graphs import export_train_step
from model.lm import LMConfig, URLLanguageModel

SHORT_SEQ_LEN = 8  # a training graph that exports in seconds (the time loop is unrolled)


def test_a_stale_train_graph_is_re_exported_and_the_rest_kept(bundle_dir, tmp_path, capsys):
    """A bundle whose config asks for another training graph than the one it holds (a shorter
    sequence) gets that graph, exported from its own weights; infer.onnx, whose computation did not
    change, keeps its bytes; the manifest's entries follow the new file."""
    # Prepare: a consistent bundle (every sha256 matches) whose train_step.onnx is stale for its config
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["config"]["seq_len"] = SHORT_SEQ_LEN
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    model = URLLanguageModel(LMConfig.from_dict(manifest["config"]))
    weights = load_bundle(bundle_dir).load_weights()
    model.load_state_dict({name: torch.from_numpy(array.copy()) for name, array in weights.items()})
    expected = tmp_path / "expected.onnx"
    expected_entry = export_train_step(model.eval(), str(expected))
    # Execute
    regraph.main([str(bundle)])
    # Assert
    assert capsys.readouterr().out.strip().endswith("rewrote train_step.onnx")
    for name in ("infer.onnx", "weights.safetensors", "tokenizer.model", "validation.txt"):
        assert (bundle / name).read_bytes() == (bundle_dir / name).read_bytes(), name
    assert regraph._computation(bundle / "train_step.onnx") == regraph._computation(expected)
    written = load_bundle(bundle).manifest  # every sha256 checked
    assert written["graphs"]["train_step"] == {**manifest["graphs"]["train_step"], **expected_entry}
    assert {k: v for k, v in written.items() if k not in ("files", "graphs")} == \
        {k: v for k, v in manifest.items() if k not in ("files", "graphs")}
