"""The two ONNX graphs of a bundle: one decoding step (infer) and one training step.

Parameters are graph *inputs* (and the training step's updated parameters are outputs), never
initializers: the graphs are downloaded once and only weights change between rounds.

The training step (forward, masked cross-entropy, backward, gradient clipping, SGD update) is
one plain inference graph: ``torch.func.grad_and_value`` over ``functional_call``, traced with
``make_fx`` and the core-ATen decompositions, then exported with the dynamo exporter. This is
what lets onnxruntime-web, which has no training build since 1.19, train the model.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn
from torch._decomp import core_aten_decompositions
from torch.fx.experimental.proxy_tensor import make_fx

from formats import durable
from model.lm import LMConfig, URLLanguageModel, masked_cross_entropy

OPSET = 20
INFER_INPUTS = ("tokens", "state")
INFER_OUTPUTS = ("log_probs", "new_state")
TRAIN_INPUTS = ("tokens", "targets", "mask", "lr")
LOSS_OUTPUT = "loss"
UPDATED_PREFIX = "updated."  # train_step output for parameter p is named "updated.p"


def parameter_names(model: URLLanguageModel) -> list[str]:
    """Parameter names in graph-input order (also the order in weights.safetensors)."""
    return [name for name, _ in model.named_parameters()]


def sgd_train_step(model: URLLanguageModel):
    """Return step(tokens, targets, mask, lr, *params) -> (loss, *updated_params).

    Plain SGD with global-norm clipping: FedAvg's client optimizer (McMahan et al. 2017), and
    stateless, so the graph needs no optimizer state in or out.
    """
    names = parameter_names(model)
    clip = model.config.clip_norm

    def loss_of(params: dict, tokens, targets, mask):
        logits = torch.func.functional_call(model, params, (tokens,))
        return masked_cross_entropy(logits, targets, mask)

    grad_and_loss = torch.func.grad_and_value(loss_of)

    def step(tokens, targets, mask, lr, *flat_params):
        params = dict(zip(names, flat_params, strict=True))
        grads, loss = grad_and_loss(params, tokens, targets, mask)
        norm = torch.sqrt(sum((g * g).sum() for g in grads.values()))
        scale = torch.clamp(clip / (norm + 1e-6), max=1.0)
        return (loss, *(params[n] - lr * scale * grads[n] for n in names))

    return step


class _TracedStep(nn.Module):
    """Wraps a make_fx GraphModule so the dynamo exporter sees an ordinary module."""

    def __init__(self, graph_module: torch.fx.GraphModule):
        super().__init__()
        self.graph_module = graph_module

    def forward(self, *args):
        return self.graph_module(*args)


class _Stepper(nn.Module):
    """Exposes URLLanguageModel.step as forward, so functional_call can swap in parameters."""

    def __init__(self, model: URLLanguageModel):
        super().__init__()
        self.model = model

    def forward(self, tokens, state):
        return self.model.step(tokens, state)


class _InferStep(nn.Module):
    """infer.onnx's signature: (tokens, state, *params) -> (log_probs, new_state)."""

    def __init__(self, model: URLLanguageModel):
        super().__init__()
        self.stepper = _Stepper(model)
        self.names = ["model." + name for name in parameter_names(model)]

    def forward(self, tokens, state, *flat_params):
        params = dict(zip(self.names, flat_params, strict=True))
        return torch.func.functional_call(self.stepper, params, (tokens, state))


def example_train_inputs(config: LMConfig) -> tuple[torch.Tensor, ...]:
    """Correctly shaped dummy inputs for tracing the training step."""
    shape = (config.batch_size, config.seq_len)
    return (torch.zeros(shape, dtype=torch.int64), torch.zeros(shape, dtype=torch.int64),
            torch.ones(shape, dtype=torch.float32), torch.tensor(0.1, dtype=torch.float32))


def _export(module: nn.Module, args: tuple, path: str, input_names, output_names,
            dynamic_shapes=None) -> None:
    """Dynamo-export to a single self-contained .onnx file (the browser loads single files)."""
    # The exporter logs a warning per torchvision op it cannot register; we use none of them.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET,
                                    input_names=list(input_names), output_names=list(output_names),
                                    dynamic_shapes=dynamic_shapes, verbose=False, optimize=True)
    # the ONNX proto is serialised in memory, then written durably: a crash leaves no half graph
    durable.write_bytes(Path(path), program.model_proto.SerializeToString())


def export_train_step(model: URLLanguageModel, path: str) -> dict:
    """Write train_step.onnx; return its manifest entry: I/O description and the role of each name."""
    names = parameter_names(model)
    params = [p.detach() for p in model.parameters()]
    inputs = example_train_inputs(model.config)
    traced = make_fx(sgd_train_step(model), decomposition_table=core_aten_decompositions())(*inputs, *params)
    updated = {n: UPDATED_PREFIX + n for n in names}
    _export(_TracedStep(traced), (*inputs, *params), path, (*TRAIN_INPUTS, *names),
            (LOSS_OUTPUT, *updated.values()))
    return {**describe_io(path), "loss_output": LOSS_OUTPUT,
            "data_inputs": {name: name for name in TRAIN_INPUTS}, "parameter_outputs": updated}


def export_infer(model: URLLanguageModel, path: str) -> dict:
    """Write infer.onnx (one decoding step, dynamic batch); return its manifest entry.

    The entry's "state" is the whole recurrent-state contract (names, shape with its batch axis,
    dtype, initial value): completers read only that, so a model with another state changes
    ``URLLanguageModel.state_layout`` and this graph, never a completer.
    """
    names = parameter_names(model)
    params = tuple(p.detach() for p in model.parameters())
    layout = model.state_layout()
    tokens = torch.zeros(2, dtype=torch.int64)
    state = model.initial_state(2)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = ({0: batch}, {layout["batch_axis"]: batch}, tuple({} for _ in params))
    _export(_InferStep(model), (tokens, state, *params), path, (*INFER_INPUTS, *names),
            INFER_OUTPUTS, dynamic_shapes=dynamic)
    tokens_name, state_name = INFER_INPUTS
    log_probs_name, new_state_name = INFER_OUTPUTS
    io = describe_io(path)
    for value in (*io["inputs"], *io["outputs"]):
        if value["name"] in (state_name, new_state_name):
            assert (value["shape"], value["dtype"]) == (layout["shape"], layout["dtype"]), \
                f"{value['name']} is {value['dtype']}{value['shape']} in the graph, the model says {layout}"
    return {**io, "tokens_input": tokens_name, "log_probs_output": log_probs_name,
            "state": {"input": state_name, "output": new_state_name, **layout}}


def describe_io(path: str) -> dict:
    """Read names, dtypes and shapes (symbolic dims as strings) of a graph's inputs/outputs."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph

    def describe(values):
        out = []
        for value in values:
            tensor_type = value.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in tensor_type.shape.dim]
            out.append({"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(
                tensor_type.elem_type).name, "shape": dims})
        return out

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}
