"""The cryptographic primitives of secure aggregation, with their exact byte definitions.

Every function here has a twin in ``web_client/secagg.js`` (WebCrypto) that gives the same bytes;
tests/privacy checks both on shared vectors. Definitions:

- **Key agreement**: X25519 (RFC 7748), 32-byte raw public and private keys.
- **Seed / key derivation**: HKDF-SHA256 (RFC 5869) of the X25519 shared secret, empty salt
  (= 32 zero bytes), ``info = "fedurl-secagg-v1:<label>:<round_id in decimal>"``, 32 bytes out.
  Labels: ``mask`` (pairwise mask seed), ``enc`` (AES-GCM key for share messages), ``graph``
  (neighbour-graph permutation key, from the public round seed instead of a shared secret).
- **Share encryption**: AES-256-GCM, a random 12-byte nonce written before the ciphertext, tag
  (16 bytes) after it, associated data given by the caller.
- **Mask PRG**: AES-256-CTR keyed by the 32-byte seed, initial counter block all zero (the whole
  16-byte block is the big-endian counter), encrypting zeros; the keystream is read as
  little-endian words of 2 or 4 bytes. Every seed is used for one vector only (pairwise seeds
  are bound to the round by HKDF's info; self-mask seeds are fresh random per round).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

LABEL_PREFIX = "fedurl-secagg-v1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
WORD_DTYPES: dict[int, np.dtype] = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair as raw 32-byte strings."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh key pair from the OS's CSPRNG."""
        return cls.from_private(X25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        """The key pair of a raw 32-byte private key (X25519 clamps it when used)."""
        key = X25519PrivateKey.from_private_bytes(private)
        return cls(bytes(private), key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def info_for(label: str, round_id: int) -> bytes:
    """HKDF's info string: the domain-separation label and the round id."""
    if not label.isascii() or ":" in label:
        raise ValueError(f"bad label {label!r}")
    if not 0 <= round_id < 1 << 63:
        raise ValueError(f"round id {round_id} out of range")
    return f"{LABEL_PREFIX}:{label}:{round_id}".encode()


def hkdf(secret: bytes, label: str, round_id: int) -> bytes:
    """HKDF-SHA256(secret, salt = empty, info = info_for(label, round_id)) -> 32 bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                info=info_for(label, round_id)).derive(secret)


def agree(private: bytes, peer_public: bytes, label: str, round_id: int) -> bytes:
    """X25519(private, peer_public) through hkdf(): the same 32 bytes on both ends.

    :raise ValueError: when the peer's key is a low-order point (the shared secret is all zero).
    """
    if len(peer_public) != KEY_BYTES:
        raise ValueError("an X25519 public key is 32 bytes")
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public))
    return hkdf(shared, label, round_id)


def encrypt(key: bytes, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
    """AES-256-GCM: nonce (12 bytes, random unless given) || ciphertext || tag."""
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise ValueError("AES-GCM nonce must be 12 bytes")
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Inverse of encrypt(). :raise cryptography.exceptions.InvalidTag: on any tampering."""
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise ValueError("ciphertext too short")
    return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)


def prg_bytes(seed: bytes, count: int) -> bytes:
    """The first count bytes of AES-256-CTR keystream under seed, counter block starting at zero."""
    if len(seed) != KEY_BYTES:
        raise ValueError("a PRG seed is 32 bytes")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return encryptor.update(bytes(count)) + encryptor.finalize()


def prg_words(seed: bytes, count: int, width: int) -> np.ndarray:
    """The first count little-endian words of width 2 or 4 bytes from the PRG (native uint16/uint32)."""
    dtype = WORD_DTYPES[width]
    native = np.uint16 if width == 2 else np.uint32
    return np.frombuffer(prg_bytes(seed, count * width), dtype=dtype).astype(native)
