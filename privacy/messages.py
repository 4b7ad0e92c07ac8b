"""The secure-aggregation messages as bytes: one small little-endian struct layout.

Documented in docs/PROTOCOL.md ("Secure aggregation"); ``web_client/secagg.js`` writes and reads
the same bytes. Every message starts with a 20-byte header::

    magic "FSA1" | type u8 | 3 zero bytes | round_id u64 | sender u32

(sender: the client's index in the cohort, or 0xFFFFFFFF for the server). Bodies by type:

====  ==============  ============================================================================
type  name            body
====  ==============  ============================================================================
0     CONFIG          n u32, degree u32, threshold u32, min_survivors u32, bits u8, width u8,
                      2 zero bytes, num_params u32, scale f64, clip f64, noise_std f64,
                      graph_seed [32]
1     ADVERTISE       c_pk [32], s_pk [32]
2     ROSTER          count u32, then count x (index u32, c_pk [32], s_pk [32])
3     SHARES          count u32, then count x (recipient u32, len u32, ciphertext [len])
4     SHARES_FOR      count u32, then count x (sender u32, len u32, ciphertext [len])
5     MASKED_INPUT    bits u8, width u8, 2 zero bytes, count u32, count words of width bytes
6     UNMASK_REQUEST  count u32, survivors u32 x count, count u32, dropped u32 x count
7     UNMASK          count u32, then count x (owner u32, kind u8, len u8, share [len])
====  ==============  ============================================================================

A share ciphertext (in SHARES / SHARES_FOR) is AES-256-GCM (nonce [12] | ct | tag [16]) of
``sender u32, recipient u32, len u8, s_sk share [len], b share [len]``, with associated data
``"FSA1" | round_id u64 | sender u32 | recipient u32``. UNMASK kind: 0 = share of the owner's
self-mask seed b (owner survived), 1 = share of its mask private key s_sk (owner dropped).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"FSA1"
HEADER = struct.Struct("<4sB3xQI")
SERVER = 0xFFFFFFFF
KEY = 32


class ProtocolError(Exception):
    """A message or request that the protocol refuses (bad peer, wrong phase, unsafe request)."""


class MessageError(ProtocolError, ValueError):
    """The bytes are not a well-formed message of the expected type and round."""


class Type:
    """Message type codes (the header's type byte)."""

    CONFIG = 0
    ADVERTISE = 1
    ROSTER = 2
    SHARES = 3
    SHARES_FOR = 4
    MASKED_INPUT = 5
    UNMASK_REQUEST = 6
    UNMASK = 7


def header(kind: int, round_id: int, sender: int) -> bytes:
    """The 20-byte header."""
    return HEADER.pack(MAGIC, kind, round_id, sender)


class Reader:
    """Bounds-checked reads over a message body."""

    def __init__(self, data: bytes, offset: int = 0):
        self.data = memoryview(data)
        self.offset = offset

    def take(self, count: int) -> bytes:
        """The next count bytes."""
        if count < 0 or self.offset + count > len(self.data):
            raise MessageError("message truncated")
        chunk = bytes(self.data[self.offset:self.offset + count])
        self.offset += count
        return chunk

    def unpack(self, fmt: str) -> tuple:
        """struct.unpack of the next bytes (little-endian)."""
        layout = struct.Struct("<" + fmt)
        return layout.unpack(self.take(layout.size))

    def u32(self) -> int:
        """One uint32."""
        return int(self.unpack("I")[0])

    def end(self) -> None:
        """Check nothing is left over."""
        if self.offset != len(self.data):
            raise MessageError(f"{len(self.data) - self.offset} trailing bytes")


def open_message(data: bytes, kind: int, round_id: int) -> tuple[int, Reader]:
    """(sender, reader over the body) after checking magic, type and round."""
    if len(data) < HEADER.size:
        raise MessageError("shorter than a header")
    magic, got_kind, got_round, sender = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MessageError("not a secure-aggregation message")
    if got_kind != kind:
        raise MessageError(f"expected message type {kind}, got {got_kind}")
    if got_round != round_id:
        raise MessageError(f"message is for round {got_round}, not {round_id}")
    return sender, Reader(data, HEADER.size)


def peek_round(data: bytes) -> int:
    """The round id in a message's header (to create a config from a CONFIG message)."""
    if len(data) < HEADER.size or data[:4] != MAGIC:
        raise MessageError("not a secure-aggregation message")
    return int(HEADER.unpack_from(data)[2])


@dataclass(frozen=True)
class RoundConfig:
    """The public parameters of one secure round; the server sends them as CONFIG."""

    round_id: int
    cohort_size: int
    degree: int
    threshold: int
    min_survivors: int
    bits: int
    num_params: int
    scale: float
    clip: float
    graph_seed: bytes
    noise_std: float = 0.0  # std of the integer noise each client adds (0: none)

    @property
    def width(self) -> int:
        """Bytes per masked word: 2 up to 16 bits, else 4."""
        return 2 if self.bits <= 16 else 4

    _BODY = struct.Struct("<IIIIBB2xIddd32s")

    def encode(self) -> bytes:
        """The CONFIG message."""
        return header(Type.CONFIG, self.round_id, SERVER) + self._BODY.pack(
            self.cohort_size, self.degree, self.threshold, self.min_survivors, self.bits, self.width,
            self.num_params, self.scale, self.clip, self.noise_std, self.graph_seed)

    @classmethod
    def decode(cls, data: bytes) -> RoundConfig:
        """Parse a CONFIG message."""
        round_id = peek_round(data)
        _, reader = open_message(data, Type.CONFIG, round_id)
        (n, degree, threshold, min_survivors, bits, width, num_params, scale, clip, noise_std,
         seed) = reader.unpack(cls._BODY.format[1:])
        reader.end()
        config = cls(round_id, n, degree, threshold, min_survivors, bits, num_params, scale, clip, seed,
                     noise_std)
        if width != config.width:
            raise MessageError("word width does not match bits")
        return config


def encode_words(kind: int, round_id: int, sender: int, bits: int, words: np.ndarray) -> bytes:
    """A MASKED_INPUT message from words in Z_{2^bits}."""
    width = 2 if bits <= 16 else 4
    dtype = "<u2" if width == 2 else "<u4"
    body = struct.pack("<BB2xI", bits, width, len(words)) + np.asarray(words).astype(dtype).tobytes()
    return header(kind, round_id, sender) + body


def decode_words(reader: Reader, bits: int, count: int) -> np.ndarray:
    """The words of a MASKED_INPUT body (native uint16/uint32), checking bits, width and count."""
    got_bits, width, got_count = reader.unpack("BB2xI")
    if got_bits != bits or width != (2 if bits <= 16 else 4) or got_count != count:
        raise MessageError(f"masked input has bits {got_bits}, width {width}, {got_count} words")
    words = np.frombuffer(reader.take(count * width), dtype="<u2" if width == 2 else "<u4")
    reader.end()
    if bits < 8 * width and int(words.max(initial=0)) >> bits:
        raise MessageError(f"a word exceeds {bits} bits")
    return words.astype(np.uint16 if width == 2 else np.uint32)
