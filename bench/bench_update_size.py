"""Bytes of one update on the wire next to the float32 size of the model it updates.

An update is the safetensors body a client POSTs (client.protocol.encode_update): one delta per
parameter plus the six metadata fields. The delta here is a real one, one training step's.

    .venv/bin/python bench/bench_update_size.py --bundle bundles/default
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from common import bundle_parser, print_table  # first: puts the repo on sys.path

from client.protocol import encode_update
from formats.bundle import load_bundle
from formats.update import Q8
from formats.urls import DEFAULT_CORPUS, load_urls
from runtime.trainer import LocalTrainer

# What a real ticket looks like (secrets.token_urlsafe(24)) and a client id (token_urlsafe(16)).
TICKET = {"ticket": "t" * 32, "version": 1}
CLIENT_ID = "c" * 22


def parse_args(argv=None) -> argparse.Namespace:
    """Command line; unknown options are errors."""
    parser = bundle_parser(__doc__)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Encode one real delta as F32, F16 and Q8; return (metric, value) rows."""
    bundle = load_bundle(args.bundle)
    trainer = LocalTrainer(bundle)
    start = bundle.load_weights()
    result = trainer.train(start, load_urls(DEFAULT_CORPUS, trainer.batch_size), epochs=1)
    delta = {name: result.weights[name] - start[name] for name in start}
    elements = sum(math.prod(p["shape"]) for p in bundle.manifest["parameters"])
    model_bytes = 4 * elements
    rows = [("parameters", f"{elements:,}"),
            ("float32 model (4 bytes x parameters)", f"{model_bytes:,} B"),
            ("weights.safetensors (download)",
             f"{bundle.manifest['files']['weights.safetensors']['bytes']:,} B")]
    for label, dtype in (("float32", np.float32), ("float16", np.float16), ("Q8 (int8, scale per 64)", Q8)):
        body = encode_update(delta, TICKET, CLIENT_ID, result.num_examples, result.loss_before,
                             result.loss_after, dtype)
        rows.append((f"update body, {label} deltas",
                     f"{len(body):,} B = {len(body) / model_bytes:.4f} x float32 model"))
    return rows


def main(argv=None) -> None:
    """Print the result table."""
    print_table(run(parse_args(argv)))


if __name__ == "__main__":
    main()
