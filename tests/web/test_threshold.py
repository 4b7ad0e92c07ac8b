"""The page applies the bundle's suggestion threshold exactly as Python does: to the network's
suggestions (runtime.complete.Completer), and to the count component's where the bundle ships one
(runtime.ngram.FusedCompleter); each test runs on the bundle without and with counts.bin."""

from __future__ import annotations

import math
import shutil

import pytest
from page_helpers import open_page, suggestions_for
from test_completer import prefixes

from formats.bundle import BundleError, min_probability
from model.counts import remove_counts
from runtime.complete import Completer
from runtime.ngram import open_completer
from study.evaluate import write_threshold

TAU = 0.05  # drops many of the small test model's suggestions and keeps many


@pytest.fixture(params=["network alone", "with counts"])
def strict_bundle(request, bundle_dir, tmp_path):
    """The test bundle with TAU in its manifest, written as fedurl-eval --calibrate --write does,
    without its count component (the page shows the network's suggestions alone) or with it."""
    copy = tmp_path / "strict-bundle"
    shutil.copytree(bundle_dir, copy)
    write_threshold(copy, TAU)
    if request.param == "network alone":
        remove_counts(copy)
    return copy


@pytest.fixture
def server_config(server_config, strict_bundle):
    """This module's servers ship the thresholded copy of the test bundle."""
    return {**server_config, "BUNDLE_DIR": str(strict_bundle)}


def test_page_drops_the_same_unlikely_suggestions_as_python(page, strict_bundle, canonical_urls):
    """90 prefixes: the same suggestions as Completer with the manifest's tau, which drops some of
    every list's tail, and keeps some that only the healed mass (step 5) lets through."""
    # Prepare
    strict, everything = Completer(strict_bundle), Completer(strict_bundle, threshold=0.0)
    typed, _ = prefixes(canonical_urls, strict.tokenizer, 70)
    expected_network = {text: strict.complete(text, k=5) for text in typed}
    expected = {text: open_completer(strict_bundle).complete(text, k=5) for text in typed}
    ranked = {text: everything.ranked(text, 5) for text in typed}
    open_page(page)
    # Execute
    got = {text: suggestions_for(page, text) for text in typed}
    # Assert
    assert strict.threshold == TAU
    dropped = sum(len(expected_network[t]) < len(ranked[t][0]) for t in typed)
    kept = sum(bool(expected_network[t]) for t in typed)
    raw_floor = math.log(TAU)
    rescued = sum(len(expected_network[t]) > sum(score >= raw_floor for _, score in ranked[t][0])
                  for t in typed)
    assert dropped >= 10 and kept >= 10 and rescued >= 3, (dropped, kept, rescued)
    wrong = {text: (got[text], expected[text]) for text in typed if got[text] != expected[text]}
    assert not wrong, f"{len(wrong)} of {len(typed)} differ (page, python): {list(wrong.items())[:3]}"


MIN_PROBABILITY = """(manifests) => import("/static/completer.js").then(({ minProbability }) =>
  manifests.map((manifest) => { try { return minProbability(manifest); } catch { return "refused"; } }))"""


def test_js_reads_and_refuses_thresholds_like_python(module_page):
    # Prepare
    manifests = [{}, {"completion": {}}, {"completion": {"min_probability": 0.004}},
                 {"completion": {"min_probability": 1}}, {"completion": {"min_probability": -0.5}},
                 {"completion": {"min_probability": 2}}, {"completion": {"min_probability": "0.1"}},
                 {"completion": {"min_probability": True}}, {"completion": {"min_probability": None}},
                 {"completion": {"min_probability": math.nan}}, {"completion": [0.1]}, {"completion": None}]

    def python(manifest):
        try:
            return min_probability(manifest)
        except BundleError:
            return "refused"

    # Execute
    got = module_page.evaluate(MIN_PROBABILITY, manifests)
    # Assert
    assert got == [python(m) for m in manifests]
    assert got.count("refused") == 8
