"""web_client/normalize.js maps URLs and typed prefixes exactly like formats/urls.py."""

from __future__ import annotations

from formats.urls import normalize_url, split_typed

EDGE_CASES = [
    "", " ", "\ufeff  x.com\r\n", "HTTPS://WWW.Example.COM:443/", "http://user:pw@Host.com:80/a b  c#frag",
    "ftp://x.org", "javascript:alert(1)", "host:8080/x", "www.", "a.com.../", ".", "foo.com?q=1#x",
    "a@b@c.com/x", "httpſ://x.com", "ſtraße.de", "İstanbul.com.tr", "ΟΔΟΣ.gr/ΣΑΣ", "e\u0301.com",
    "a\x1cb.com", "a\u0085b.com", "a\u3000b.com", "a\u200bb.com", "x.com/" + "😀" * 196, "x.com/" + "😀" * 194,
    "例え.jp/パス", "http:", "https:/", "HTTP://", "http:\n", "htt", "h", "www.Goo", "HTTPS://WWW.GOO",
    "github.com/", "github.com/a/", "x.com#only-fragment", "http://[::1]:80/", "WWW.WWW.x.com",
]
RUN = """async (texts) => {
  const { normalizeUrl, splitTyped } = await import("/static/normalize.js");
  return texts.map((text) => { const { fill, canonical } = splitTyped(text); return [normalizeUrl(text), fill, canonical]; });
}"""


def test_js_matches_python_on_real_lines_and_edge_cases(module_page, raw_url_lines):
    """normalize_url and split_typed agree on 3,000 raw lines of the shared data and on edge cases."""
    # Prepare
    texts = raw_url_lines + EDGE_CASES
    expected = [[normalize_url(t), *split_typed(t)] for t in texts]
    # Execute
    got = module_page.evaluate(RUN, texts)
    # Assert
    wrong = [(t, g, e) for t, g, e in zip(texts, got, expected) if g != e]
    assert not wrong, f"{len(wrong)} of {len(texts)} differ, e.g. {wrong[:3]}"
