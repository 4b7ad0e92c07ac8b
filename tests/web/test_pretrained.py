"""The shipped model (pretrained/): verified, small, and it completes paths on popular sites.

The junk checks here are written independently of runtime/complete.py's rule, so a model or a
decoder that starts suggesting ``github.com.com`` or ``github.com/.net`` again fails them.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import pytest
from page_helpers import open_page, suggestions_for

from formats.bundle import load_bundle
from runtime.complete import Completer
from runtime.ngram import FusedCompleter, open_completer

PRETRAINED = Path(__file__).resolve().parents[2] / "pretrained"
MAX_GIT_BYTES = 5_000_000  # what git stores (zlib) and about what a browser downloads (gzip)
SITES = ["github.com/", "en.wikipedia.org/wiki/", "youtube.com/", "docs.python.org/", "stackoverflow.com/"]
# Typed paths where the shipped network is sure enough of some path to pass its threshold.
LIKELY = ["github.com/", "stackoverflow.com/", "en.wikipedia.org/wiki/P", "docs.python.org/"]
SHOWN = 5  # suggestions the page shows (constants.js SUGGESTIONS_K)
GENERIC = r"(com|net|org)"
REPEATED_TLD = re.compile(rf"\.{GENERIC}\.{GENERIC}(/|$)")
TLD_AS_SEGMENT = re.compile(rf"/[^/?]*\.{GENERIC}(/|$)")


def path_like(typed: str, suggestion: str) -> bool:
    """A suggestion for a typed host + '/' that continues the path, not the host."""
    rest = suggestion[len(typed):]
    return (suggestion.startswith(typed) and bool(rest) and not rest.startswith(".")
            and not REPEATED_TLD.search(suggestion) and not TLD_AS_SEGMENT.search("/" + rest))


def test_the_shipped_bundle_is_verified_complete_and_small():
    bundle = load_bundle(PRETRAINED)  # every sha256 checked
    stored = sum(len(zlib.compress(path.read_bytes(), 9)) for path in PRETRAINED.iterdir())
    assert stored <= MAX_GIT_BYTES, f"{stored:,} bytes compressed"
    assert "kasztp" in bundle.manifest["training"]["corpus"], "trained on public URL lists with paths"


def test_the_shipped_model_suggests_paths_and_no_junk_in_python():
    """Path-like suggestions for every site before the threshold; the shipped tau keeps the likely ones."""
    everything, shipped = Completer(PRETRAINED, threshold=0.0), Completer(PRETRAINED)
    assert shipped.threshold > 0, "pretrained/ ships its calibrated tau (docs/RESULTS.md)"
    for typed in SITES:
        suggestions = everything.complete(typed, k=3)
        assert suggestions, typed
        assert all(path_like(typed, s) for s in suggestions), (typed, suggestions)
    for typed in LIKELY:
        assert shipped.complete(typed, k=3), typed
    for typed in ("github.com", "google.com", "wikipedia.org"):
        assert not any(REPEATED_TLD.search(s) for s in everything.complete(typed, k=5)), typed


def test_the_shipped_counts_add_paths_the_network_is_unsure_of():
    """What the page shows (the network mixed with counts.bin): path-like suggestions for every site,
    the site's commonest page where the network alone misses it, and no junk."""
    page, network = open_completer(PRETRAINED), Completer(PRETRAINED)
    assert isinstance(page, FusedCompleter), "pretrained/ ships its count component"
    main_page = "en.wikipedia.org/wiki/Main_Page"
    assert main_page not in network.complete("en.wikipedia.org/wiki/", k=SHOWN)
    # Fifth since the counts are discounted: they now also offer paths other sites share
    # (Programming, Program), which the network likes more (docs/RESULTS.md)
    assert main_page in page.complete("en.wikipedia.org/wiki/", k=SHOWN)
    for typed in SITES:
        suggestions = page.complete(typed, k=3)
        assert suggestions, typed
        assert all(path_like(typed, s) for s in suggestions), (typed, suggestions)
    for typed in ("github.com", "google.com", "wikipedia.org"):
        assert not any(REPEATED_TLD.search(s) for s in page.complete(typed, k=5)), typed


@pytest.fixture
def server_config(server_config):
    """This module's servers ship the committed model instead of the small test bundle."""
    return {**server_config, "BUNDLE_DIR": str(PRETRAINED)}


def test_the_page_completes_popular_paths_with_the_shipped_model(page):
    open_page(page)
    for typed in LIKELY[:3]:
        suggestions = suggestions_for(page, typed)
        assert suggestions, typed
        assert all(path_like(typed, s) for s in suggestions), (typed, suggestions)


def test_the_page_finishes_a_word_the_url_already_holds(page):
    """Neither the network nor the counts know bdnews24 (no corpus holds the host); the URL does."""
    typed, repeat = "bdnews24.com/bd", "bdnews24.com/bdnews24"
    fused = open_completer(PRETRAINED)
    assert repeat not in fused.completer.complete(typed, SHOWN) + fused.counts.complete(typed, SHOWN)
    open_page(page)
    suggestions = suggestions_for(page, typed)
    assert suggestions[0] == repeat, suggestions
    assert suggestions[1:] and all(path_like(typed, s) for s in suggestions), suggestions
