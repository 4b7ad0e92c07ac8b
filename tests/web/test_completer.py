"""The page's suggestions are runtime.complete.Completer's, prefix for prefix."""

from __future__ import annotations

import random

from page_helpers import open_page, suggestions_for

from runtime.complete import Completer
from runtime.tokenizer import Tokenizer

HAND_MADE = ["g", "goo", "GOO", "githu", "http", "https:/", "HTTPS://WWW.Goo", "http://www.", "www.",
             "www.wiki", "en.wikipedia.org/wiki/", "amazon.co", "a b", "x.com/%2", "é", "日本",
             "youtube.com/", "news.", "mail.google.c", "stackoverflow.com/q"]


def prefixes(urls: list[str], tokenizer: Tokenizer, count: int) -> tuple[list[str], int]:
    """Random cuts of real URLs (most end mid-piece) plus hand-made ones; also how many are mid-piece."""
    rng = random.Random(7)
    cuts, mid_piece = [], 0
    for url in rng.sample(urls, count):
        cut = url[:rng.randint(1, len(url))]
        cuts.append(cut)
        ids = tokenizer.encode(cut)
        mid_piece += tokenizer.encode(url)[:len(ids)] != ids  # the cut splits a piece of the full URL
    return cuts + HAND_MADE, mid_piece


def test_page_suggestions_equal_python_completer(page, bundle_dir, canonical_urls):
    """230 prefixes, over 50 of them ending mid-piece: the same five suggestions in the same order
    (a fresh browser context has no history, so every suggestion is the model's)."""
    # Prepare
    completer = Completer(bundle_dir)
    typed, mid_piece = prefixes(canonical_urls, completer.tokenizer, 210)
    expected = {text: completer.complete(text, k=5) for text in typed}
    open_page(page)
    # Execute
    got = {text: suggestions_for(page, text) for text in typed}
    # Assert
    assert mid_piece >= 50 and len(typed) >= 200
    assert sum(bool(s) for s in expected.values()) >= 0.9 * len(typed), "most prefixes should get suggestions"
    wrong = {text: (got[text], expected[text]) for text in typed if got[text] != expected[text]}
    assert not wrong, (f"{len(wrong)} of {len(typed)} prefixes differ (page, python): "
                       f"{list(wrong.items())[:3]}")
