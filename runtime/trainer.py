"""Local training with train_step.onnx in onnxruntime: what a browser does, in Python.

Simulated clients, the server's integration tests and the evaluation use this; the browser's
worker does the same with onnxruntime-web. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from formats.bundle import Bundle
from runtime.session import open_session, open_tokenizer
from runtime.tokenizer import Tokenizer


@dataclass
class Rows:
    """Teacher-forcing rows, one URL each: tokens = [bos, p1..pn], targets = [p1..pn, eos]."""

    tokens: np.ndarray   # (N, T) int64
    targets: np.ndarray  # (N, T) int64
    mask: np.ndarray     # (N, T) float32, 1 where a target counts

    def __len__(self) -> int:
        return len(self.tokens)


def encode_rows(tokenizer: Tokenizer, urls: list[str], seq_len: int, config: dict) -> Rows:
    """Encode canonical URLs into fixed-width rows, truncated to seq_len and padded with pad_id."""
    n = len(urls)
    tokens = np.full((n, seq_len), config["pad_id"], dtype=np.int64)
    targets = np.full((n, seq_len), config["pad_id"], dtype=np.int64)
    mask = np.zeros((n, seq_len), dtype=np.float32)
    for row, url in enumerate(urls):
        pieces = tokenizer.encode(url)
        inputs = ([config["bos_id"]] + pieces)[:seq_len]
        outputs = (pieces + [config["eos_id"]])[:seq_len]
        tokens[row, :len(inputs)] = inputs
        targets[row, :len(outputs)] = outputs
        mask[row, :len(outputs)] = 1.0
    return Rows(tokens, targets, mask)


def batches(rows: Rows, batch_size: int, order: np.ndarray | None = None):
    """Yield (tokens, targets, mask) of exactly batch_size rows; the last one padded with mask 0."""
    order = np.arange(len(rows)) if order is None else order
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        pad = batch_size - len(index)
        parts = [rows.tokens[index], rows.targets[index], rows.mask[index]]
        if pad:
            parts = [np.concatenate([p, np.zeros((pad, p.shape[1]), dtype=p.dtype)]) for p in parts]
        yield tuple(parts)


@dataclass
class TrainResult:
    """Outcome of local training: what a client reports alongside its weight delta."""

    weights: dict[str, np.ndarray]
    loss_before: float
    loss_after: float
    num_examples: int
    steps: int


class LocalTrainer:
    """Runs a bundle's train_step.onnx on a list of canonical URLs."""

    def __init__(self, bundle: Bundle, threads: int = 1):
        graph = bundle.manifest["graphs"]["train_step"]
        self.session = open_session(bundle, "train_step", threads)
        self.tokenizer = open_tokenizer(bundle)
        self.config = bundle.manifest["config"]
        self.batch_size, self.seq_len = graph["batch_size"], graph["seq_len"]
        self.data_inputs = graph["data_inputs"]
        self.parameter_outputs = graph["parameter_outputs"]
        self.output_names = [graph["loss_output"], *self.parameter_outputs.values()]

    def rows(self, urls: list[str]) -> Rows:
        """Encode URLs with this bundle's tokenizer and training-graph width."""
        return encode_rows(self.tokenizer, urls, self.seq_len, self.config)

    def step(self, weights: dict, tokens, targets, mask, lr: float) -> tuple[float, dict]:
        """One SGD step; returns (loss before the step, updated weights)."""
        feed = {self.data_inputs["tokens"]: tokens, self.data_inputs["targets"]: targets,
                self.data_inputs["mask"]: mask, self.data_inputs["lr"]: np.array(lr, dtype=np.float32),
                **weights}
        loss, *updated = self.session.run(self.output_names, feed)
        return float(loss), dict(zip(self.parameter_outputs, updated, strict=True))

    def mean_loss(self, weights: dict, rows: Rows) -> float:
        """Token-weighted mean loss over rows (lr 0 steps: the weights do not move)."""
        total, count = 0.0, 0.0
        for tokens, targets, mask in batches(rows, self.batch_size):
            loss, _ = self.step(weights, tokens, targets, mask, 0.0)
            total += loss * float(mask.sum())
            count += float(mask.sum())
        return total / max(count, 1.0)

    def train(self, weights: dict, urls: list[str], epochs: int = 1, lr: float = 0.5,
              seed: int = 0) -> TrainResult:
        """Shuffled SGD epochs over urls; loss before/after are full passes over the same rows."""
        rows = self.rows(urls)
        rng = np.random.default_rng(seed)
        loss_before = self.mean_loss(weights, rows)
        steps = 0
        for _ in range(epochs):
            for tokens, targets, mask in batches(rows, self.batch_size, rng.permutation(len(rows))):
                _, weights = self.step(weights, tokens, targets, mask, lr)
                steps += 1
        return TrainResult(weights, loss_before, self.mean_loss(weights, rows), len(rows), steps)
