"""The BPE tokenizer: lossless on real URLs and on odd characters; its browser vocabulary."""

import pytest

from formats.bundle import load_bundle
from runtime.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(bundle_dir):
    return Tokenizer.load(load_bundle(bundle_dir).path("tokenizer.model"))


def test_round_trip_on_real_urls(tokenizer, kasztp_urls):
    urls = kasztp_urls[::25]
    assert len(urls) > 1500
    for url in urls:
        ids = tokenizer.encode(url)
        assert tokenizer.decode(ids) == url
        assert b"".join(tokenizer.piece_bytes[i] for i in ids) == url.encode()


@pytest.mark.parametrize("text", ["münchen.de/straße", "example.org/%E2%9C%93?q=a+b&x=1", "a.com/😀",
                                  "x.org/~user/_private", "A.COM/UPPER"])
def test_round_trip_on_unusual_characters_without_unk(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.processor.unk_id() not in ids
    assert b"".join(tokenizer.piece_bytes[i] for i in ids) == text.encode()


def test_browser_vocab_describes_every_piece(tokenizer):
    vocab = tokenizer.browser_vocab()
    assert len(vocab["pieces"]) == tokenizer.vocab_size
    kinds = [kind for _, _, kind in vocab["pieces"]]
    assert kinds.count(6) == 256 and kinds[:4] == [3, 2, 3, 3]  # <pad> <unk> <s> </s>
    assert (vocab["pad_id"], vocab["unk_id"], vocab["bos_id"], vocab["eos_id"]) == (0, 1, 2, 3)
