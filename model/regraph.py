"""python -m model.regraph BUNDLE: re-export a bundle's ONNX graphs from its own config and weights.

For a change to how model/lm.py or model/graphs.py compute a step that keeps the parameters
(names, shapes, values), e.g. the whole-sequence input projection: nothing is retrained, and
the tokenizer, weights, validation set and training record stay as they are. A graph file is
rewritten only where what it computes changes (not where only the exporter's
metadata, such as source line numbers, moved), so a re-export leaves ``infer.onnx`` alone when
``URLLanguageModel.step`` did not change; the manifest's graph entries and sha256s follow, and the
manifest is written last, so until then the bundle refuses to load rather than mix versions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import onnx
import torch

from formats import durable
from formats.bundle import MANIFEST, file_entries, load_bundle
from model.graphs import export_infer, export_train_step
from model.lm import LMConfig, URLLanguageModel

EXPORTERS = {"infer": export_infer, "train_step": export_train_step}


def _computation(path: Path) -> bytes:
    """The graph's bytes without the exporter's metadata (names of source lines, modules, fx nodes)."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info, *model.graph.initializer):
        del value.metadata_props[:]
    return model.SerializeToString()


def regraph(directory: Path) -> list[str]:
    """Re-export every graph of the bundle at directory; return the names of the files that changed."""
    bundle = load_bundle(directory)  # every sha256 checked: never re-export from damaged weights
    manifest = json.loads((directory / MANIFEST).read_text())  # as stored, not upgraded
    model = URLLanguageModel(LMConfig.from_dict(manifest["config"]))
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in bundle.load_weights().items()})
    model.eval()
    changed = []
    with tempfile.TemporaryDirectory(prefix="regraph-") as work:
        for graph, export in EXPORTERS.items():
            entry = manifest["graphs"][graph]
            fresh = Path(work) / entry["file"]
            entry.update(export(model, str(fresh)))
            if _computation(fresh) != _computation(directory / entry["file"]):
                durable.write_bytes(directory / entry["file"], fresh.read_bytes())
                changed.append(entry["file"])
    manifest["files"] = {**manifest["files"], **file_entries(directory, changed)}
    durable.write_json(directory / MANIFEST, manifest)
    return changed


def main(argv=None) -> None:
    """Entry point: python -m model.regraph BUNDLE."""
    parser = argparse.ArgumentParser(prog="python -m model.regraph", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="bundle directory to update in place")
    args = parser.parse_args(argv)
    changed = regraph(args.bundle)
    print(f"{args.bundle}: rewrote {', '.join(changed) if changed else 'nothing (graphs unchanged)'}")


if __name__ == "__main__":
    main()
