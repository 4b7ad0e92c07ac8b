"""A bundle's count component in the page: web_client/ngram.js CountTrie reads counts.bin
(formats/counts.py) and completes like runtime/ngram.py CharNgramLM.from_bytes, score for score,
scores any suggestion as CharNgramLM.score does, refuses what formats.counts.decode refuses, and
fuseSuggestions is runtime/ngram.py fuse."""

from __future__ import annotations

import base64
import math
import random
import struct

import pytest
from test_personal_ngram import ODD

from formats import counts as counts_format
from runtime.ngram import CharNgramLM, fuse

COMPLETE = """async ([encoded, typed]) => {
  const { CountTrie } = await import("/static/ngram.js");
  const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
  const trie = new CountTrie(bytes.buffer); // an ArrayBuffer, as the worker fetches it
  return typed.map((text) => trie.completeScored(text, 5));
}"""
REFUSAL = """async (encoded) => {
  const { CountTrie } = await import("/static/ngram.js");
  try {
    new CountTrie(Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0)));
    return null;
  } catch (error) {
    return `${error.name}: ${error.message}`;
  }
}"""
ADD = """async (encoded) => {
  const { CountTrie } = await import("/static/ngram.js");
  const trie = new CountTrie(Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0)));
  const before = trie.completeScored("a", 5);
  let refusal = null;
  try {
    trie.add("a.com/new");
  } catch (error) {
    refusal = error.message;
  }
  return { refusal, unchanged: JSON.stringify(trie.completeScored("a", 5)) === JSON.stringify(before) };
}"""
SCORE = """async ([encoded, pairs]) => {
  const { CountTrie } = await import("/static/ngram.js");
  const trie = new CountTrie(Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0)));
  return pairs.map(([typed, suggestion]) => trie.score(typed, suggestion));
}"""
FUSE = """async (cases) => {
  const { fuseSuggestions } = await import("/static/ngram.js");
  return cases.map(([scored, k]) => fuseSuggestions(scored, k));
}"""


def encoded(data: bytes) -> str:
    """Bytes as page.evaluate can pass them: base64 (JSON has no bytes)."""
    return base64.b64encode(data).decode("ascii")


def small_counts() -> bytes:
    """A valid counts.bin of order 3 over a few URLs: the base the malformed cases alter."""
    return CharNgramLM(["a.com/x", "b.org/y", "a.com/z"], order=3).to_bytes()


def test_js_count_trie_equals_python_score_for_score(module_page, canonical_urls):
    """300 real URLs and the non-ASCII and junk ones twice (so pruning below 2 keeps their
    symbols), pruned like a bundle's counts: 150 prefixes, some with symbols outside the
    alphabet, get the same suggestions with bit-identical scores."""
    # Prepare
    rng = random.Random(11)
    urls = rng.sample(canonical_urls, 300) + ODD * 2
    lm = CharNgramLM(urls)
    lm.prune(2)
    data = lm.to_bytes()
    typed = [url[:rng.randint(0, len(url))] for url in rng.sample(urls, 140)]
    typed += ["", "日", "😀", "a.com/", "google.com", "HTTPS://www.A", "a.org/", "ü", "x" * 60, "Ω.com/"]
    python = CharNgramLM.from_bytes(data)
    expected = [[[text, score] for text, score in python.complete_scored(t, 5)] for t in typed]
    # Execute
    got = module_page.evaluate(COMPLETE, [encoded(data), typed])
    # Assert
    assert sum(map(bool, expected)) >= 140
    wrong = [(t, g, e) for t, g, e in zip(typed, got, expected, strict=True) if g != e]
    assert not wrong, f"{len(wrong)} of {len(typed)} differ (typed, page, python): {wrong[:2]}"


def test_js_count_score_equals_python_bit_for_bit(module_page, canonical_urls):
    """CountTrie.score is CharNgramLM.score: the suggestions of 100 real prefixes and made-up ones
    (some with symbols the counts never saw) score bit-identically."""
    # Prepare
    rng = random.Random(5)
    urls = rng.sample(canonical_urls, 300) + ODD * 2
    lm = CharNgramLM(urls)
    lm.prune(2)
    data = lm.to_bytes()
    python = CharNgramLM.from_bytes(data)
    pairs = []
    for url in rng.sample(urls, 100):
        typed = url[:rng.randint(0, len(url))]
        made_up = [typed + "qx/", typed + "\u2603z"]  # the snowman is in no URL here
        pairs += [[typed, text] for text in python.complete(typed, 2) + made_up]
    expected = [python.score(typed, suggestion) for typed, suggestion in pairs]
    # Execute
    got = module_page.evaluate(SCORE, [encoded(data), pairs])
    # Assert
    assert len(pairs) >= 300 and sum(s > 0 for s in expected) >= 200 and 0 in expected
    assert got == expected


def malformed() -> dict[str, bytes]:
    """counts.bin variants that formats.counts.decode refuses, by what is wrong with them."""
    data = small_counts()
    order, counts, totals, urls = counts_format.decode(data)
    size, n, e = struct.unpack_from("<HII", data, 6)
    nodes = counts_format.HEADER.size + 4 * size  # where the node symbols start
    last_count = data[-1]  # below 0x80 in small_counts(): a one-byte varint

    def patched(offset: int, value: bytes) -> bytes:
        return data[:offset] + value + data[offset + len(value):]

    return {
        "no header": data[:10],
        "truncated": data[:-1],
        "truncated nodes": data[:nodes + n],
        "wrong magic": patched(0, b"FUCX"),
        "version 2": patched(4, b"\x02"),
        "order 0": patched(5, b"\x00"),
        "empty alphabet": patched(6, struct.pack("<H", 0)),
        "no contexts": patched(8, struct.pack("<I", 0)),
        "alphabet not ascending": patched(20, data[24:28] + data[20:24]),
        "code point above U+10FFFF": patched(nodes - 4, struct.pack("<I", 0x110000)),
        "trailing byte": data + b"\x00",
        "children do not add up": patched(nodes + n, bytes([data[nodes + n] + 1])),
        "node symbol outside the alphabet": patched(nodes + 1, bytes([size])),
        "entry symbol outside the alphabet": patched(nodes + 3 * n, bytes([size])),
        "siblings not ascending": patched(nodes + 1, data[nodes + 2:nodes + 3] + data[nodes + 1:nodes + 2]),
        "varint of 6 bytes": data[:-1] + bytes([last_count | 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
        "varint above 2^32 - 1": data[:-1] + bytes([0x80, 0x80, 0x80, 0x80, 0x10]),
        "zero count": counts_format.encode(order, {**counts, "": {**counts[""], "a": 0}}, totals, urls),
        "counts above the total": counts_format.encode(order, counts, {**totals, "": 1}, urls),
        "deeper than its order": counts_format.encode(order - 1, counts, totals, urls),
        "node no node's child": orphan_node(),
    }


def orphan_node() -> bytes:
    """Order 2, alphabet "a", three nodes: the root with one child, that child, and a third node
    with a child of its own that no node has as a child (the children still add up to N - 1)."""
    header = counts_format.HEADER.pack(counts_format.MAGIC, counts_format.VERSION, 2, 1, 3, 0, 0)
    symbols, children, entry_counts, totals = bytes(3), bytes([1, 0, 1]), bytes(3), bytes(3)
    return header + struct.pack("<I", ord("a")) + symbols + children + entry_counts + totals


MALFORMED = malformed()


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_counts_refused_by_page_and_python(module_page, case):
    """Each malformed counts.bin is refused by the page with a CountsFormatError that says what is
    wrong, and by formats.counts.decode; the page loads the valid bytes they come from."""
    # Prepare
    data = MALFORMED[case]
    assert module_page.evaluate(REFUSAL, encoded(small_counts())) is None
    # Execute
    refusal = module_page.evaluate(REFUSAL, encoded(data))
    # Assert
    assert refusal is not None and refusal.startswith("CountsFormatError: counts.bin "), refusal
    with pytest.raises(counts_format.CountsFormatError):
        counts_format.decode(data)


def test_count_trie_refuses_add(module_page):
    """The bundle's counts are pruned, so counting a visit into them is refused and changes nothing."""
    # Execute
    result = module_page.evaluate(ADD, encoded(small_counts()))
    # Assert
    assert result["refusal"] and "read-only" in result["refusal"]
    assert result["unchanged"]


def test_js_fuse_equals_python(module_page):
    """Random network log-probs (some -inf: out of the network's reach) and count scores (some 0:
    never counted) of up to 8 texts, k of 0 to 6: the same texts in the same order, log shares
    equal to 1e-12 (Math.exp and Math.log may round a last bit unlike the C library)."""
    # Prepare
    rng = random.Random(13)
    texts = ["a", "b", "c", "d", "e", "é", "😀", "\uff61"]
    cases = []
    for _ in range(200):
        scored = [[t, rng.choice([-rng.expovariate(0.5)] * 5 + [-math.inf]),
                   rng.choice([0.0, rng.random() ** 3, rng.random() ** 9])]
                  for t in rng.sample(texts, rng.randint(0, 8))]
        cases.append([scored, rng.randint(0, 6)])
    expected = [fuse([tuple(s) for s in scored], k) for scored, k in cases]
    # Execute
    got = module_page.evaluate(FUSE, cases)
    # Assert
    assert sum(map(bool, expected)) >= 150
    (got_texts, got_scores), (texts, scores) = (
        ([[text for text, _ in pairs] for pairs in lists], [s for pairs in lists for _, s in pairs])
        for lists in (got, expected))
    assert got_texts == texts
    assert got_scores == pytest.approx(scores, rel=1e-12, abs=1e-12)
