"""The page's infer session: weights baked into infer.onnx, the same numbers and searches as Python."""

from __future__ import annotations

import numpy as np
import pytest

from formats.bundle import load_bundle
from runtime.complete import Completer

# onnxruntime-web, the served model's manifest, infer.onnx and weights, in a module page.
LOAD = """
  const ort = await import("/ort/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = "/ort/";
  ort.env.wasm.numThreads = 1;
  const { decode } = await import("/static/safetensors.js");
  const { bakeWeights, openInfer } = await import("/static/infer_session.js");
  const { manifest } = await (await fetch("/api/model")).json();
  const get = async (name) =>
    new Uint8Array(await (await fetch(`/api/files/${manifest.files[name].sha256}`)).arrayBuffer());
  const graph = await get(manifest.graphs.infer.file);
  const { tensors } = decode(await get("weights.safetensors"));
  const values = Object.fromEntries(manifest.parameters.map(({ name }) => [name, tensors.get(name).data]));
"""

STEP = """async ([tokens, state]) => {""" + LOAD + """
  const baked = await ort.InferenceSession.create(bakeWeights(graph, manifest.parameters, values));
  const { step, release } = await openInfer(ort, graph, manifest, values);
  const out = await step(tokens, Float32Array.from(state));
  await release();
  return { inputs: baked.inputNames, logProbs: Array.from(out.logProbs), state: Array.from(out.state) };
}"""


class CountingCompleter(Completer):
    """Counts the rows it runs through infer.onnx."""

    rows = 0

    def step(self, tokens, state):
        self.rows += len(tokens)
        return super().step(tokens, state)


def test_baked_graph_computes_what_the_shipped_graph_computes(module_page, bundle_dir):
    """Weights baked in as initializers: only tokens and state are inputs, and one batched step
    gives Python's log-probs and state (weights fed as inputs) to float32 rounding."""
    # Prepare
    bundle = load_bundle(bundle_dir)
    completer = Completer(bundle_dir)
    tokens = [5, 17, 300, completer.config["bos_id"]]
    state = np.random.default_rng(0).normal(size=bundle.state.dims(len(tokens))).astype(np.float32)
    # Execute
    got = module_page.evaluate(STEP, [tokens, state.ravel().tolist()])
    # Assert
    log_probs, new_state = completer.step(np.array(tokens), state)
    assert got["inputs"] == [completer.io["tokens_input"], bundle.state.input]
    np.testing.assert_allclose(np.array(got["logProbs"]).reshape(log_probs.shape), log_probs, atol=1e-5)
    np.testing.assert_allclose(np.array(got["state"]).reshape(new_state.shape), new_state, atol=1e-6)


REFUSE = """async () => {""" + LOAD + """
  const renamed = [...manifest.parameters, { name: "no.such.parameter", shape: [1] }];
  try {
    bakeWeights(graph, renamed, { ...values, "no.such.parameter": new Float32Array(1) });
    return "baked";
  } catch (error) {
    return error.message;
  }
}"""


def test_baking_refuses_a_graph_without_the_parameter_inputs(module_page):
    """A manifest naming a parameter the graph does not take is an error, not a silently unused weight."""
    # Execute
    message = module_page.evaluate(REFUSE)
    # Assert
    assert message == "infer.onnx has no input for parameter(s) no.such.parameter"


TYPING = """async ([url, tau]) => {""" + LOAD + """
  const { Completer } = await import("/static/completer.js");
  const { Tokenizer } = await import("/static/tokenizer.js");
  const tokenizer = new Tokenizer(JSON.parse(new TextDecoder().decode(await get(manifest.tokenizer.vocab))));
  const { step } = await openInfer(ort, graph, manifest, values);
  const ids = manifest.tokenizer;
  let rows = 0;
  const completer = new Completer({ tokenizer, config: manifest.config, state: manifest.graphs.infer.state,
    blockedIds: [ids.pad_id, ids.unk_id, ids.bos_id], threshold: tau,
    step: (tokens, state) => { rows += tokens.length; return step(tokens, state); } });
  const suggestions = [];
  for (let end = 1; end <= url.length; end++) {
    suggestions.push(await completer.complete(url.slice(0, end), 5));
  }
  return { suggestions, rows };
}"""


@pytest.mark.parametrize("tau", [0.0, 0.02])
def test_js_typing_runs_the_rows_python_runs(module_page, bundle_dir, tau):
    """Typed key by key, completer.js runs exactly the model rows Python's completer runs (the same
    piece-sequence cache, the same beams dropped below tau), under half of what searching each
    prefix afresh takes, with the same suggestions."""
    # Prepare
    url = "en.wikipedia.org/wiki/Main_Page"
    python = CountingCompleter(bundle_dir, threshold=tau)
    expected = [python.complete(url[:end]) for end in range(1, len(url) + 1)]
    fresh_rows = 0
    for end in range(1, len(url) + 1):
        fresh = CountingCompleter(bundle_dir, threshold=tau)
        fresh.complete(url[:end])
        fresh_rows += fresh.rows
    # Execute
    got = module_page.evaluate(TYPING, [url, tau])
    # Assert
    assert got["suggestions"] == expected
    assert got["rows"] == python.rows < 0.5 * fresh_rows, (got["rows"], python.rows, fresh_rows)
