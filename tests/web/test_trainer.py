"""In-browser training (web_client/worker.js + trainer.js) equals onnxruntime in Python."""

from __future__ import annotations

import numpy as np
import pytest

from formats.bundle import load_bundle
from runtime.trainer import LocalTrainer, batches

TOLERANCE = 1e-5
LR = 0.5
# Start a worker as the page does, send it one protocol request, return plain arrays.
ASK_WORKER = """async ([type, fields]) => {
  const { WorkerClient } = await import("/static/protocol.js");
  const worker = new WorkerClient(new Worker("/static/worker.js", { type: "module" }));
  const model = await (await fetch("/api/model")).json();
  const arrays = { tokens: Int32Array, targets: Int32Array, mask: Float32Array };
  for (const [key, Type] of Object.entries(arrays)) if (key in fields) fields[key] = Type.from(fields[key]);
  const reply = await worker.request(type, { ...fields, model });
  worker.worker.terminate();
  reply.weights = reply.weights?.map((t) => ({ ...t, data: Array.from(t.data) }));
  reply.delta = reply.delta?.map(({ name, shape, data }) =>
    ({ name, shape, squares: data.reduce((a, v) => a + v * v, 0) }));
  return reply;
}"""


@pytest.fixture
def bundle(bundle_dir):
    """The bundle the test server imported as global version 1."""
    return load_bundle(bundle_dir)


def test_one_train_step_matches_python(module_page, bundle, canonical_urls):
    """Same batch, same weights, lr 0.5: loss and every updated parameter within 1e-5."""
    # Prepare: 12 real URLs, so the batch also holds 4 all-padding rows
    trainer, global_weights = LocalTrainer(bundle), bundle.load_weights()
    tokens, targets, mask = next(batches(trainer.rows(canonical_urls[100:112]), trainer.batch_size))
    expected_loss, expected = trainer.step(global_weights, tokens, targets, mask, LR)
    fields = {"tokens": tokens.ravel().tolist(), "targets": targets.ravel().tolist(),
              "mask": mask.ravel().tolist(), "lr": LR}
    # Execute
    reply = module_page.evaluate(ASK_WORKER, ["trainStep", fields])
    # Assert
    assert abs(reply["loss"] - expected_loss) <= TOLERANCE
    assert [t["name"] for t in reply["weights"]] == list(expected)
    for tensor in reply["weights"]:
        want = expected[tensor["name"]]
        got = np.asarray(tensor["data"], np.float32)
        assert tensor["shape"] == list(want.shape) and got.size == want.size
        assert np.abs(got - want.ravel()).max() <= TOLERANCE, tensor["name"]
    moved = sum(not np.array_equal(expected[n], global_weights[n]) for n in expected)
    assert moved == len(expected), "the step should move every parameter"


def test_local_training_reports_python_losses_and_a_delta(module_page, bundle, canonical_urls):
    """The `train` verb: loss before equals Python's mean_loss on the same URLs, the loss drops,
    and the delta is non-zero with every manifest parameter's name and shape, in order."""
    # Prepare
    urls = canonical_urls[200:240]
    trainer = LocalTrainer(bundle)
    expected_before = trainer.mean_loss(bundle.load_weights(), trainer.rows(urls))
    # Execute
    reply = module_page.evaluate(ASK_WORKER, ["train", {"urls": urls, "epochs": 1, "lr": LR}])
    # Assert
    assert abs(reply["lossBefore"] - expected_before) <= TOLERANCE
    assert reply["lossAfter"] < reply["lossBefore"]
    assert reply["numExamples"] == len(urls) and reply["steps"] == 3 and reply["baseVersion"] == 1
    assert [(t["name"], t["shape"]) for t in reply["delta"]] == [
        (p["name"], p["shape"]) for p in bundle.manifest["parameters"]]
    assert sum(t["squares"] for t in reply["delta"]) > 0
