"""The sentencepiece BPE tokenizer over canonical URLs, and its browser twin's vocabulary file.

BPE rather than unigram because its encoding is a deterministic merge order that a 100-line
JS encoder reproduces exactly (web_client/tokenizer.js); unigram's Viterbi ties differ between
implementations. No normalisation inside sentencepiece (formats/urls.py owns that), no
dummy prefix, and byte fallback so any Unicode URL encodes without <unk>.
"""

from __future__ import annotations

import io
import json
import string
from pathlib import Path

import sentencepiece as spm

SPECIAL_IDS = {"pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3}
BYTE_PIECES = 256
# One training line holding every printable ASCII character, so each is a base piece even when
# the corpus (e.g. bare domains) never shows it; a URL path then needs no byte fallback.
ASCII_ALPHABET = "".join(c for c in string.printable if c.isprintable() and c != " ")


def train_tokenizer(urls: list[str], vocab_size: int) -> bytes:
    """Train a BPE model on canonical URLs; return the serialized model proto."""
    minimum = len(SPECIAL_IDS) + BYTE_PIECES + len(ASCII_ALPHABET)
    if vocab_size <= minimum:
        raise ValueError(f"--vocab-size must exceed {minimum} (specials, 256 byte pieces, ASCII)")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([ASCII_ALPHABET, *urls]), model_writer=model,
        vocab_size=vocab_size, model_type="bpe", character_coverage=1.0, byte_fallback=True,
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        split_by_whitespace=False, split_by_unicode_script=False, split_by_number=False,
        split_digits=False, hard_vocab_limit=False, max_sentence_length=4096,
        num_threads=2, minloglevel=2, **SPECIAL_IDS)
    return model.getvalue()


class Tokenizer:
    """Encode canonical URLs to piece ids; know each piece's bytes for prefix-constrained decoding."""

    def __init__(self, model_proto: bytes):
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self.processor.vocab_size()
        self.piece_bytes = [self._bytes_of(i) for i in range(self.vocab_size)]

    @classmethod
    def load(cls, path) -> Tokenizer:
        """Load a tokenizer.model file."""
        return cls(Path(path).read_bytes())

    def _bytes_of(self, piece_id: int) -> bytes:
        """What a piece contributes to the URL: its UTF-8 text, one byte, or nothing (controls)."""
        if self.processor.is_byte(piece_id):
            return bytes([int(self.processor.id_to_piece(piece_id)[3:5], 16)])
        if self.processor.is_control(piece_id) or self.processor.is_unknown(piece_id):
            return b""
        return self.processor.id_to_piece(piece_id).replace("\u2581", " ").encode("utf-8")

    def encode(self, text: str) -> list[int]:
        """Piece ids of a canonical URL (no BOS/EOS)."""
        return self.processor.encode(text, out_type=int)

    def decode(self, ids: list[int]) -> str:
        """Text of piece ids."""
        return self.processor.decode(ids)

    def browser_vocab(self) -> dict:
        """tokenizer.json: what web_client/tokenizer.js needs to encode exactly like this class."""
        proto = self.processor
        pieces = [[proto.id_to_piece(i), proto.get_score(i), _piece_kind(proto, i)]
                  for i in range(self.vocab_size)]
        return {"model_type": "bpe", "byte_fallback": True, "pieces": pieces,
                "unk_id": proto.unk_id(), "pad_id": proto.pad_id(),
                "bos_id": proto.bos_id(), "eos_id": proto.eos_id()}

    def write_browser_vocab(self, path) -> None:
        """Write tokenizer.json compactly."""
        Path(path).write_text(json.dumps(self.browser_vocab(), ensure_ascii=False, separators=(",", ":")))


def _piece_kind(proto: spm.SentencePieceProcessor, piece_id: int) -> int:
    """Sentencepiece's ModelProto.SentencePiece.Type: 1 normal, 2 unknown, 3 control, 6 byte."""
    if proto.is_unknown(piece_id):
        return 2
    if proto.is_control(piece_id):
        return 3
    if proto.is_byte(piece_id):
        return 6
    return 1
