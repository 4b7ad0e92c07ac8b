"""The exported graphs agree with the torch model they came from, and training works."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from formats.bundle import load_bundle
from model.graphs import sgd_train_step
from model.lm import LMConfig, URLLanguageModel
from runtime.trainer import LocalTrainer, batches


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def torch_model(bundle):
    """The torch model with the bundle's weights."""
    model = URLLanguageModel(LMConfig.from_dict(bundle.manifest["config"]))
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in bundle.load_weights().items()})
    return model.eval()


def test_infer_matches_torch_step(bundle, torch_model):
    """infer.onnx log-probs and state equal URLLanguageModel.step within 1e-4."""
    # Prepare
    rng = np.random.default_rng(0)
    config = bundle.manifest["config"]
    tokens = rng.integers(4, config["vocab_size"], size=5)
    state = rng.normal(size=bundle.state.dims(5)).astype(np.float32)
    session = ort.InferenceSession(str(bundle.path("infer.onnx")))
    io = bundle.manifest["graphs"]["infer"]
    # Execute
    log_probs, new_state = session.run([io["log_probs_output"], bundle.state.output], {
        io["tokens_input"]: tokens, bundle.state.input: state, **bundle.load_weights()})
    expected_lp, expected_state = torch_model.step(torch.from_numpy(tokens), torch.from_numpy(state))
    # Assert
    assert np.abs(log_probs - expected_lp.detach().numpy()).max() <= 1e-4
    assert np.abs(new_state - expected_state.detach().numpy()).max() <= 1e-4


def test_manifest_state_is_what_the_model_carries(bundle, torch_model):
    """The manifest's state section is the model's state_layout, and initial_state honours it."""
    spec = bundle.state
    assert {k: v for k, v in bundle.manifest["graphs"]["infer"]["state"].items()
            if k not in ("input", "output")} == torch_model.state_layout()
    initial = torch_model.initial_state(3).numpy()
    assert initial.shape == spec.dims(3) and initial.dtype == spec.dtype and not initial.any()


def test_train_step_matches_torch(bundle, torch_model):
    """One train_step.onnx step equals the eager torch step: loss and every parameter within 1e-5."""
    # Prepare
    trainer = LocalTrainer(bundle)
    urls = ["github.com/login", "en.wikipedia.org/wiki/Main_Page", "example.org", "news.ycombinator.com"]
    tokens, targets, mask = next(batches(trainer.rows(urls), trainer.batch_size))
    weights = bundle.load_weights()
    # Execute
    loss, updated = trainer.step(weights, tokens, targets, mask, 0.5)
    expected = sgd_train_step(torch_model)(torch.from_numpy(tokens), torch.from_numpy(targets),
                                           torch.from_numpy(mask), torch.tensor(0.5),
                                           *[p.detach() for p in torch_model.parameters()])
    # Assert
    assert abs(loss - expected[0].item()) <= 1e-5
    for (name, _), new in zip(torch_model.named_parameters(), expected[1:], strict=True):
        assert np.abs(updated[name] - new.detach().numpy()).max() <= 1e-5, name
    assert any(not np.array_equal(updated[n], weights[n]) for n in weights), "the step changed nothing"


def test_all_padding_batch_is_a_no_op(bundle):
    """A batch with mask 0 everywhere gives loss 0, no NaN, and unchanged weights."""
    trainer = LocalTrainer(bundle)
    shape = (trainer.batch_size, trainer.seq_len)
    weights = bundle.load_weights()
    loss, updated = trainer.step(weights, np.zeros(shape, np.int64), np.zeros(shape, np.int64),
                                 np.zeros(shape, np.float32), 1.0)
    assert loss == 0.0
    for name, value in updated.items():
        assert np.isfinite(value).all()
        np.testing.assert_array_equal(value, weights[name])


def test_twenty_steps_on_real_urls_lower_the_loss(bundle, kasztp_urls):
    """20 SGD steps of train_step.onnx on real URLs reduce the loss on those URLs."""
    trainer = LocalTrainer(bundle)
    urls = kasztp_urls[1::97][: trainer.batch_size * 20]
    result = trainer.train(bundle.load_weights(), urls, epochs=1, lr=0.5, seed=1)
    assert result.steps == 20
    assert result.loss_after < result.loss_before - 0.05, (result.loss_before, result.loss_after)
