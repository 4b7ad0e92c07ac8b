"""One training step of a bundle's model on one fixed batch: onnxruntime (Python) vs torch eager.

Both run the same math: onnxruntime runs the bundle's train_step.onnx (runtime.trainer.LocalTrainer,
what simulated clients run), torch runs ``model.graphs.sgd_train_step`` eagerly, the function that
graph was traced from. Same batch (the first batch_size URLs of the default corpus), same weights,
same lr, the same thread count for both. The browser's number comes from bench/bench_browser.py.

    .venv/bin/python bench/bench_training.py --bundle bundles/default [--runs 5 --steps 10 --threads 1]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import bundle_parser, print_table, spread, time_runs  # first: puts the repo on sys.path

from formats.bundle import load_bundle
from formats.urls import DEFAULT_CORPUS, load_urls
from model.graphs import sgd_train_step
from model.lm import LMConfig, URLLanguageModel
from runtime.trainer import LocalTrainer, batches

LR = 0.5


def parse_args(argv=None) -> argparse.Namespace:
    """Command line; unknown options are errors."""
    parser = bundle_parser(__doc__)
    parser.add_argument("--runs", type=int, default=5,
                        help="timed runs; the median is reported (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=10, help="steps per run (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for both runtimes (default: %(default)s)")
    return parser.parse_args(argv)


def fixed_batch(trainer: LocalTrainer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first full batch of the default corpus (top-sites domains), encoded by the bundle."""
    urls = load_urls(DEFAULT_CORPUS, trainer.batch_size)
    return next(batches(trainer.rows(urls), trainer.batch_size))


def torch_step(bundle, weights: dict, batch, threads: int):
    """A zero-argument eager torch training step on batch, and its first result (for parity)."""
    torch.set_num_threads(threads)
    model = URLLanguageModel(LMConfig.from_dict(bundle.manifest["config"]))
    step = sgd_train_step(model)
    params = [torch.from_numpy(np.array(weights[name])) for name in bundle.parameter_names]
    inputs = [torch.from_numpy(a) for a in batch] + [torch.tensor(LR, dtype=torch.float32)]
    loss, *updated = step(*inputs, *params)
    first = dict(zip(bundle.parameter_names, (u.detach().numpy() for u in updated), strict=True))
    return (lambda: step(*inputs, *params)), float(loss), first


def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Time both runtimes; return (metric, value) rows."""
    bundle = load_bundle(args.bundle)
    trainer = LocalTrainer(bundle, threads=args.threads)
    weights, batch = bundle.load_weights(), fixed_batch(trainer)
    ort_loss, ort_updated = trainer.step(weights, *batch, LR)
    eager, torch_loss, torch_updated = torch_step(bundle, weights, batch, args.threads)
    ort_ms, torch_ms = [], []
    for _ in range(args.runs):  # interleaved, so a load change on the shared machine hits both alike
        ort_ms += time_runs(lambda: trainer.step(weights, *batch, LR), 1, args.steps)
        torch_ms += time_runs(eager, 1, args.steps)
    drift = max(float(np.abs(ort_updated[n] - torch_updated[n]).max()) for n in ort_updated)
    config = bundle.manifest["config"]
    return [("batch", f"{config['batch_size']} x {config['seq_len']} pieces, "
                      f"{int(batch[2].sum())} counted; {args.threads} thread(s)"),
            ("onnxruntime Python step", spread(ort_ms)),
            ("torch eager step", spread(torch_ms)),
            ("ratio torch / onnxruntime", f"{np.median(torch_ms) / np.median(ort_ms):.2f}"),
            ("parity: loss, max |weight diff|", f"{ort_loss:.5f} vs {torch_loss:.5f}, {drift:.1e}")]


def main(argv=None) -> None:
    """Print the result table."""
    print_table(run(parse_args(argv)))


if __name__ == "__main__":
    main()
