"""web_client/normalize.js maps URLs and typed prefixes exactly like formats/urls.py."""

from __future__ import annotations

import random

import pytest

from formats.urls import normalize_url, split_typed

EDGE_CASES = [
    "", " ", "\ufeff  x.com\r\n", "HTTPS://WWW.Example.COM:443/", "http://user:pw@Host.com:80/a b  c#frag",
    "ftp://x.org", "javascript:alert(1)", "host:8080/x", "www.", "a.com.../", ".", "foo.com?q=1#x",
    "a@b@c.com/x", "httpſ://x.com", "ſtraße.de", "İstanbul.com.tr", "ΟΔΟΣ.gr/ΣΑΣ", "e\u0301.com",
    "a\x1cb.com", "a\u0085b.com", "a\u3000b.com", "a\u200bb.com",
    "x.com/" + "😀" * 196, "x.com/" + "😀" * 194,
    "例え.jp/パス", "http:", "https:/", "HTTP://", "http:\n", "htt", "h", "www.Goo", "HTTPS://WWW.GOO",
    "github.com/", "github.com/a/", "x.com#only-fragment", "http://[::1]:80/", "WWW.WWW.x.com",
]
RUN = """async (texts) => {
  const { normalizeUrl, splitTyped } = await import("/static/normalize.js");
  return texts.map((text) => {
    const { fill, canonical } = splitTyped(text);
    return [normalizeUrl(text), fill, canonical];
  });
}"""


def texts_of(source: str, request) -> list[str]:
    """The hand-made edge cases, and every prefix of each (always there), or the shared data's
    3,000 raw lines (skipped where ../shared is absent)."""
    if source == "shared lines":
        return request.getfixturevalue("raw_url_lines")
    prefixes = [text[:cut] for text in EDGE_CASES for cut in range(1, len(text))]
    return EDGE_CASES + random.Random(0).sample(prefixes, min(len(prefixes), 600))


@pytest.mark.parametrize("source", ["edge cases", "shared lines"])
def test_js_matches_python(module_page, request, source):
    """normalize_url and split_typed agree, text for text."""
    # Prepare
    texts = texts_of(source, request)
    expected = [[normalize_url(t), *split_typed(t)] for t in texts]
    # Execute
    got = module_page.evaluate(RUN, texts)
    # Assert
    assert len(got) == len(texts) >= len(EDGE_CASES)
    wrong = [(t, g, e) for t, g, e in zip(texts, got, expected, strict=True) if g != e]
    assert not wrong, f"{len(wrong)} of {len(texts)} differ, e.g. {wrong[:3]}"
