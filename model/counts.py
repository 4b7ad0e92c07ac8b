"""python -m model.counts BUNDLE --corpus FILE ...: give a bundle its count component, counts.bin.

A character 8-gram of the corpus (runtime/ngram.py), counts below ``--min-count`` pruned, that
the completer mixes with the network's suggestions (``runtime.ngram.FusedCompleter``; the page's
completion worker does the same, web_client/ngram.js). ``fedurl-export`` writes one from its own corpus; this
command adds or replaces one in an existing bundle without retraining (how ``pretrained/`` got its
own). The manifest's ``counts`` section records what was counted; the manifest is written last.

Why prune at 5: across sources the mix kept its whole gain with counts below 5 dropped (8-12 %
of the counts kept); below 10 it lost the gain typing kasztp (docs/RESULTS.md). Symbols past the
254 commonest are dropped too (counts.bin's alphabet holds 255, with BOS).

``add_counts`` writes counts.bin, then the manifest: a crash between the two leaves a bundle that
``load_bundle`` refuses (sha256 mismatch) until the command is run again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from formats import durable
from formats.bundle import MANIFEST, file_entries, load_bundle
from formats.counts import MAX_ALPHABET
from formats.urls import corpus_name, corpus_spec, read_corpora
from runtime.ngram import COUNTS_FILE, CharNgramLM

MIN_COUNT = 5


class NothingCounted(ValueError):
    """Pruning left no count: the corpus is too small for the minimum count."""


def write_counts(directory: Path, urls: list[str], min_count: int = MIN_COUNT) -> dict:
    """Count urls into directory/counts.bin; return the manifest's ``counts`` section."""
    lm = CharNgramLM()
    for url in tqdm(urls, desc="counting", unit="url", file=sys.stderr, mininterval=1.0, disable=None):
        lm.add(url)
    lm.prune(min_count)
    lm.keep_commonest(MAX_ALPHABET - 1)  # and BOS
    if not lm.counts:
        raise NothingCounted(f"no count of the corpus reaches {min_count}: lower the minimum count")
    durable.write_bytes(directory / COUNTS_FILE, lm.to_bytes())
    return {"file": COUNTS_FILE, "order": lm.order, "min_count": min_count, "urls": lm.urls,
            "contexts": len(lm.counts), "counts": lm.entries()}


def add_counts(directory: Path, urls: list[str], corpus_name: str, min_count: int = MIN_COUNT) -> dict:
    """Write counts.bin into a bundle and list it in its manifest; return the manifest."""
    load_bundle(directory)  # every sha256 checked: never touch a damaged bundle
    manifest = json.loads((directory / MANIFEST).read_text())  # as stored, not upgraded
    manifest["counts"] = {**write_counts(directory, urls, min_count), "corpus": corpus_name}
    manifest["files"] = {**manifest["files"], **file_entries(directory, [COUNTS_FILE])}
    durable.write_json(directory / MANIFEST, manifest)
    return manifest


def remove_counts(directory: Path) -> None:
    """Take counts.bin out of a bundle's manifest (the file stays): its network then suggests alone."""
    manifest = json.loads((directory / MANIFEST).read_text())
    del manifest["files"][COUNTS_FILE], manifest["counts"]
    durable.write_json(directory / MANIFEST, manifest)


def positive(text: str) -> int:
    """An integer of at least 1 (an argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def main(argv=None) -> None:
    """Entry point: python -m model.counts BUNDLE --corpus FILE [--corpus FILE ...]."""
    parser = argparse.ArgumentParser(prog="python -m model.counts", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="bundle directory to update in place")
    parser.add_argument("--corpus", type=corpus_spec, action="append", required=True,
                        help="text file with one URL or domain per line, or top-sites JSON; FILE:N takes "
                             "its first N URLs, FILE:M-N its URLs M to N; repeat to combine files (the "
                             "bundle's training corpus, or more public URLs: docs/RESULTS.md)")
    parser.add_argument("--min-count", type=positive, default=MIN_COUNT,
                        help=f"drop counts below this (default {MIN_COUNT})")
    args = parser.parse_args(argv)
    name = corpus_name(args.corpus)
    try:
        urls = read_corpora(args.corpus)
        if not urls:
            raise ValueError(f"{name} holds no usable URL")
        manifest = add_counts(args.bundle, urls, name, args.min_count)
    except (OSError, ValueError) as error:  # a missing corpus, a bad bundle (BundleError), nothing kept
        raise SystemExit(f"model.counts: {error}") from None
    counts = manifest["counts"]
    print(f"{args.bundle}: {COUNTS_FILE} {manifest['files'][COUNTS_FILE]['bytes'] / 1e6:.2f} MB, "
          f"{counts['counts']:,} counts in {counts['contexts']:,} contexts from {counts['urls']:,} URLs")


if __name__ == "__main__":
    main()
