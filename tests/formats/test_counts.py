"""counts.bin (formats/counts.py): the layout worked by hand, round trips, and refusals."""

import struct

import pytest

from formats import counts
from runtime.ngram import COUNT_DISCOUNT, CharNgramLM

URLS = ["github.com/login", "github.com/about", "gitlab.com/explore", "日本.jp/パス", "😀.ws/a",
        "a.org/b?c=1"]


def test_layout_of_one_url_worked_by_hand():
    """Order 2 over "ab": contexts "", BOS, "a", "b" breadth first, symbols by code point."""
    lm = CharNgramLM(["ab"], order=2)
    data = lm.to_bytes()
    alphabet = [0x02, 0x03, ord("a"), ord("b")]  # BOS, EOS, a, b
    expected = b"".join((
        b"FUCT", bytes([1, 2]), struct.pack("<HIII", 4, 4, 6, 1), struct.pack("<4I", *alphabet),
        bytes([0, 0, 2, 3]),  # node symbols: root, BOS, a, b
        bytes([3, 0, 0, 0]),  # children: the root's three
        bytes([3, 1, 1, 1]),  # counts per node
        bytes([1, 2, 3, 2, 3, 1]),  # root: EOS a b; BOS: a; a: b; b: EOS
        bytes([3, 1, 1, 1]), bytes([1] * 6)))  # totals, counts (one-byte varints)
    assert data == expected


def test_round_trip_keeps_every_kept_count_and_total():
    lm = CharNgramLM(URLS * 3 + ["x" * 300 + ".com"])  # a count of 300 needs a two-byte varint
    lm.prune(2)
    order, table, totals, urls = counts.decode(lm.to_bytes())
    assert (order, table, urls) == (lm.order, lm.counts, lm.urls)
    assert totals == {ctx: lm.totals[ctx] for ctx in lm.counts}
    assert max(c for t in table.values() for c in t.values()) >= 300


def test_the_decoded_model_suggests_what_the_pruned_one_does():
    """With the discount a bundle's counts score with, and with stupid backoff (discount None)."""
    lm, plain = (CharNgramLM(URLS * 2 + ["github.com/features"], discount=d) for d in (COUNT_DISCOUNT, None))
    lm.prune(2)
    plain.prune(2)
    loaded = CharNgramLM.from_bytes(lm.to_bytes())
    backoff = CharNgramLM.from_bytes(lm.to_bytes(), discount=None)
    for typed in ["", "g", "github.com/", "日", "😀.ws/", "a.org/b"]:
        assert loaded.complete_scored(typed, 5) == lm.complete_scored(typed, 5), typed
        assert backoff.complete_scored(typed, 5) == plain.complete_scored(typed, 5), typed
    assert loaded.complete("github.com/", 3)


def _mutated(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1:]


GOOD = CharNgramLM(["ab"], order=2).to_bytes()  # the worked example: node symbols at 36, children at 40,
# counts per node at 44, count symbols at 48, totals at 54, counts at 58
BROKEN = {
    "truncated": GOOD[:-1],
    "no header": GOOD[:10],
    "magic": b"FUCX" + GOOD[4:],
    "version": _mutated(GOOD, 4, 2),
    "trailing byte": GOOD + b"\x00",
    "count above its total": _mutated(GOOD, len(GOOD) - 1, 2),
    "children out of order": _mutated(_mutated(GOOD, 37, 3), 38, 2),
    "symbol outside the alphabet": _mutated(GOOD, 48, 9),
    "zero count": _mutated(GOOD, len(GOOD) - 1, 0),
    "children that do not add up": _mutated(GOOD, 40, 2),
    "a node no node's child": _mutated(_mutated(GOOD, 40, 0), 41, 3),
    "varint over 5 bytes": GOOD[:-6] + b"\x81\x80\x80\x80\x80\x00" + b"\x01" * 5,
}


@pytest.mark.parametrize("name", BROKEN)
def test_malformed_bytes_are_refused(name):
    with pytest.raises(counts.CountsFormatError):
        counts.decode(BROKEN[name])


def test_more_than_255_symbols_are_refused_when_encoding():
    lm = CharNgramLM(["".join(map(chr, range(0x4E00, 0x4E00 + 300)))])
    with pytest.raises(ValueError, match="prune more"):
        lm.to_bytes()
