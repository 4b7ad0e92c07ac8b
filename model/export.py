"""fedurl-export: build a model bundle from a URL corpus.

Normalise the corpus, train the sentencepiece tokenizer, pretrain the LM centrally with Adam,
then write tokenizer, weights, infer.onnx, train_step.onnx, the public validation set, the count
component (counts.bin, model/counts.py) and the manifest (last) into a temporary directory that
replaces --out in one rename.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from formats import durable
from formats import tensors as tensor_codec
from formats.bundle import DEFAULT_MIN_PROBABILITY, FORMAT_VERSION, MANIFEST, file_entries
from formats.urls import DEFAULT_CORPUS, corpus_name, corpus_spec, read_corpora
from model.counts import MIN_COUNT, NothingCounted, positive, write_counts
from model.graphs import export_infer, export_train_step
from model.lm import LMConfig, URLLanguageModel, count_parameters, masked_cross_entropy
from runtime.ngram import COUNTS_FILE
from runtime.tokenizer import SPECIAL_IDS, Tokenizer, train_tokenizer
from runtime.trainer import batches, encode_rows

REPO = Path(__file__).resolve().parent.parent
VALIDATION_FILE = "validation.txt"
VALIDATION_URLS = 200  # enough to see a round that wrecks the model; a gate pass costs ~0.1 s


def pretrain(model: URLLanguageModel, rows, steps: int, batch_size: int, lr: float, seed: int) -> float:
    """Central Adam pretraining with cosine decay; returns the mean loss of the last 50 steps."""
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    recent: list[float] = []
    progress = tqdm(range(steps), desc="pretraining", unit="step", file=sys.stderr, mininterval=1.0,
                    disable=None)  # None: quiet when stderr is not a terminal (logs, CI)
    for _ in progress:
        order = rng.choice(len(rows), size=batch_size, replace=len(rows) < batch_size)
        tokens, targets, mask = next(batches(rows, batch_size, order))
        width = int(np.flatnonzero(mask.any(axis=0)).max()) + 1  # skip all-padding columns
        loss = masked_cross_entropy(model(torch.from_numpy(tokens[:, :width])),
                                    torch.from_numpy(targets[:, :width]), torch.from_numpy(mask[:, :width]))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), model.config.clip_norm)
        optimizer.step()
        schedule.step()
        recent = (recent + [loss.item()])[-50:]
        progress.set_postfix(loss=f"{np.mean(recent):.3f}")
    return float(np.mean(recent)) if recent else float("nan")


def build_manifest(model: URLLanguageModel, infer_io: dict, train_io: dict, training: dict,
                   directory: Path) -> dict:
    """The manifest: every name a client needs (graph entries come from model.graphs), plus sha256s."""
    config = model.config
    return {
        "format_version": FORMAT_VERSION, "model_version": 1, "parent_version": None,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": config.to_dict(),
        "tokenizer": {"model": "tokenizer.model", "vocab": "tokenizer.json", "type": "bpe",
                      "vocab_size": config.vocab_size, **SPECIAL_IDS,
                      "normalization": "formats/urls.py (scheme and www. dropped, host lower-cased)"},
        "parameters": [{"name": n, "shape": list(p.shape), "dtype": "float32"}
                       for n, p in model.named_parameters()],
        "graphs": {
            "infer": {"file": "infer.onnx", **infer_io},
            "train_step": {"file": "train_step.onnx", **train_io, "batch_size": config.batch_size,
                           "seq_len": config.seq_len},
        },
        "training": training,
        "completion": {"min_probability": DEFAULT_MIN_PROBABILITY},  # tune: fedurl-eval --calibrate
        "files": file_entries(directory),
    }


def write_validation_set(directory: Path, urls: list[str], seed: int) -> dict:
    """The publish gate's validation set (server/gate.py): a fixed sample of the *export corpus*,
    public URLs and never user data, one per line; return its manifest entry (with the sha256).
    """
    rng = np.random.default_rng([seed, 7])
    chosen = sorted(rng.choice(len(urls), size=min(VALIDATION_URLS, len(urls)), replace=False))
    data = "".join(f"{urls[i]}\n" for i in chosen).encode()
    durable.write_bytes(directory / VALIDATION_FILE, data)
    return {"file": VALIDATION_FILE, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "urls": len(chosen), "source": "a sample of the export corpus"}


def export_bundle(urls: list[str], out: Path, config: LMConfig, steps: int, lr: float,
                  batch_size: int, seed: int, corpus_name: str, threads: int = 1,
                  counts_min_count: int | None = MIN_COUNT) -> dict:
    """Train and write a complete bundle to out (replacing it atomically); return the manifest.

    counts_min_count: prune the corpus's count component (counts.bin, model/counts.py) below it;
    None writes none.
    """
    started = time.monotonic()
    torch.manual_seed(seed)
    # One thread: the model's matrices are tiny, and on a busy 2-core machine a second torch
    # thread made a step 9x slower (0.40 s vs 3.7 s), while alone it gains little.
    torch.set_num_threads(threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    work.chmod(0o755)
    try:
        # the counts first: a corpus they cannot be made of fails before minutes of training
        counts = None if counts_min_count is None else write_counts(work, urls, counts_min_count)
        tokenizer = Tokenizer(train_tokenizer(urls, config.vocab_size))
        config.vocab_size = tokenizer.vocab_size  # a tiny corpus may yield fewer pieces
        (work / "tokenizer.model").write_bytes(tokenizer.processor.serialized_model_proto())
        tokenizer.write_browser_vocab(work / "tokenizer.json")
        model = URLLanguageModel(config)
        rows = encode_rows(tokenizer, urls, config.seq_len, config.to_dict())
        final_loss = pretrain(model, rows, steps, batch_size, lr, seed)
        model.eval()
        tensor_codec.save(work / "weights.safetensors",
                           {n: p.detach().numpy() for n, p in model.named_parameters()})
        print("exporting ONNX graphs…", file=sys.stderr)
        infer_io = export_infer(model, str(work / "infer.onnx"))
        train_io = export_train_step(model, str(work / "train_step.onnx"))
        training = {"corpus": corpus_name, "urls": len(urls), "steps": steps, "batch_size": batch_size,
                    "lr": lr, "seed": seed, "final_loss": round(final_loss, 4),
                    "parameters": count_parameters(model),
                    "seconds": round(time.monotonic() - started, 1)}
        manifest = build_manifest(model, infer_io, train_io, training, work)
        manifest["validation"] = write_validation_set(work, urls, seed)
        if counts is not None:
            manifest["counts"] = {**counts, "corpus": corpus_name}
            manifest["files"].update(file_entries(work, [COUNTS_FILE]))
        durable.write_json(work / MANIFEST, manifest)
        _replace_directory(work, out)
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _replace_directory(new: Path, out: Path) -> None:
    """Move new into out's place; an old bundle there is removed only after the swap."""
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise SystemExit(f"fedurl-export: {out} exists and is not a bundle; refusing to overwrite it")
    old = out.with_name(f".{out.name}-old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


def default_steps(num_urls: int, batch_size: int) -> int:
    """About four epochs, between 1,000 and 4,000 steps.

    On a 43k-URL split of kasztp.txt, 3,000 steps beat 1,000 on held-out URLs (KSR@3 0.359 vs
    0.312, top-1 0.404 vs 0.353); a 500-domain corpus needs no more than 1,000.
    """
    return max(1000, min(4000, math.ceil(4 * num_urls / batch_size)))


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options; every default lives here."""
    defaults = LMConfig()
    parser = argparse.ArgumentParser(
        prog="fedurl-export", description="Train the tokenizer and the tiny URL LM on a corpus and "
        "write a versioned model bundle (manifest, tokenizer, weights, infer.onnx, train_step.onnx).")
    parser.add_argument("--corpus", type=corpus_spec, action="append",
                        help="text file with one URL or domain per line, or top-sites JSON; FILE:N takes "
                             "its first N URLs, FILE:M-N its URLs M to N; repeat to combine files "
                             "(default: the npm package top-sites, 500 popular domains)")
    parser.add_argument("--out", type=Path, default=REPO / "bundles" / "default",
                        help="bundle directory to write (replaced atomically; default: bundles/default)")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="sentencepiece pieces")
    parser.add_argument("--embedding-width", type=int, default=defaults.n_embd,
                        help="width of a piece's embedding (the network's capacity, with --hidden-width)")
    parser.add_argument("--hidden-width", type=int, default=defaults.n_hidden,
                        help="width of the GRU state (the update and the browser's step grow with it)")
    parser.add_argument("--steps", type=int, default=None,
                        help="pretraining steps (default: about 4 epochs, 1000 to 4000)")
    parser.add_argument("--batch-size", type=int, default=64, help="pretraining batch size")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N corpus URLs")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for pretraining")
    parser.add_argument("--counts-min-count", type=positive, default=MIN_COUNT, metavar="N",
                        help="the count component (counts.bin: a character 8-gram of the corpus that the "
                             f"completer mixes in) drops counts below N (default {MIN_COUNT})")
    parser.add_argument("--no-counts", action="store_true",
                        help="write no count component: suggestions come from the network alone")
    args = parser.parse_args(argv)
    args.corpus = args.corpus or [(DEFAULT_CORPUS, None)]
    for name in ("vocab_size", "embedding_width", "hidden_width", "steps", "batch_size", "threads"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv=None) -> None:
    """Entry point of fedurl-export."""
    args = parse_args(argv)
    name = corpus_name(args.corpus)
    try:
        urls = read_corpora(args.corpus)[:args.limit]
    except FileNotFoundError as error:
        raise SystemExit(f"fedurl-export: {error}") from None
    if len(urls) < 10:
        raise SystemExit(f"fedurl-export: {name} holds {len(urls)} usable URLs; need at least 10")
    print(f"corpus: {len(urls)} URLs from {name}", file=sys.stderr)
    steps = args.steps or default_steps(len(urls), args.batch_size)
    try:
        config = LMConfig(vocab_size=args.vocab_size, n_embd=args.embedding_width, n_hidden=args.hidden_width)
        manifest = export_bundle(urls, args.out, config, steps, args.lr, args.batch_size, args.seed, name,
                                 args.threads, None if args.no_counts else args.counts_min_count)
    except NothingCounted as error:
        raise SystemExit(f"fedurl-export: {error} (--counts-min-count) or pass --no-counts") from None
    sizes = ", ".join(f"{n} {e['bytes'] / 1e6:.2f} MB" for n, e in manifest["files"].items())
    print(f"wrote {args.out}: {manifest['training']['parameters']:,} parameters, "
          f"final loss {manifest['training']['final_loss']}, {manifest['training']['seconds']} s; {sizes}")


if __name__ == "__main__":
    main()
