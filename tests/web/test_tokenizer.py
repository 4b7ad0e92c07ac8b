"""web_client/tokenizer.js encodes exactly like Python sentencepiece 0.2.1, and stays small."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from runtime.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]
EDGE_CASES = [
    "", "a", " ", "  two  spaces  ", "tab\there", "new\nline", "nbsp\u00a0x", "ideographic\u3000space",
    "café.fr/crème-brûlée", "e\u0301.com", "日本語.jp/パス", "例え.テスト", "مثال.إختبار/صفحة",
    "😀.ws/🎉?q=🙂",
    "bücher.de/ü", "ß.de", "ﬁ.com", "x.com/%20a%2Fb%E2%82%AC", "x.com/%%41%zz%", "a%20b c%20",
    "\u2581literal", "<0x41>", "<s>x</s>", "<unk><pad>", "\x00\x01\x7f", "www.www.www.",
    "https://www.example.com:8080/path?q=1&r=2#frag", "a" * 300, "ab" * 150 + "/" * 20,
    "xn--bcher-kva.example", "user:pass@host.com", "HTTP://EXAMPLE.COM/UPPER",
]
ENCODE_ALL = """async ([spec, texts]) => {
  const { Tokenizer } = await import("/static/tokenizer.js");
  const tokenizer = new Tokenizer(spec);
  return texts.map((text) => tokenizer.encode(text));
}"""
MAX_GZIP_BYTES = 300 * 1024


def texts_of(source: str, request) -> list[str]:
    """Hand-made cases plus the top-sites domains npm installs (always there), or 2,000 kasztp URLs
    and the raw lines of every shared file (skipped where ../shared is absent)."""
    if source == "shared data":
        kasztp_urls = request.getfixturevalue("kasztp_urls")
        return random.Random(0).sample(kasztp_urls, 2000) + request.getfixturevalue("raw_url_lines")
    from formats.urls import DEFAULT_CORPUS, load_urls

    return EDGE_CASES + load_urls(DEFAULT_CORPUS, None)


@pytest.mark.parametrize("source", ["edge cases", "shared data"])
def test_ids_equal_sentencepiece(module_page, bundle_dir, request, source):
    """Identical ids, text for text."""
    # Prepare
    tokenizer = Tokenizer.load(bundle_dir / "tokenizer.model")
    spec = json.loads((bundle_dir / "tokenizer.json").read_text())
    texts = texts_of(source, request)
    # Execute
    got = module_page.evaluate(ENCODE_ALL, [spec, texts])
    # Assert
    assert len(got) == len(texts) >= len(EDGE_CASES) + 400
    wrong = [(text, ids, tokenizer.encode(text)) for text, ids in zip(texts, got, strict=True)
             if ids != tokenizer.encode(text)]
    assert not wrong, f"{len(wrong)} of {len(texts)} differ, e.g. {wrong[:3]}"


def test_byte_fallback_is_exercised(bundle_dir):
    """The edge cases reach byte pieces, so the parity test covers byte fallback."""
    tokenizer = Tokenizer.load(bundle_dir / "tokenizer.model")
    pieces = tokenizer.processor.encode("日本語.jp/😀", out_type=str)
    assert any(piece.startswith("<0x") for piece in pieces)


def test_tokenizer_code_and_data_fit_the_size_budget(bundle_dir):
    """tokenizer.js plus tokenizer.json stay within 300 KB gzipped."""
    payload = ((REPO / "web_client" / "tokenizer.js").read_bytes()
               + (bundle_dir / "tokenizer.json").read_bytes())
    assert len(gzip.compress(payload, 9)) <= MAX_GZIP_BYTES
