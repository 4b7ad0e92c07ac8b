"""The proof-of-work puzzle's rule, shared by the server that checks it (server/identity.py) and the
Python client that pays it (client/protocol.py); web_client/pow.js is the browser's twin.

A counter solves a puzzle when SHA-256(puzzle ":" counter) starts with ``difficulty`` zero bits.
"""

from __future__ import annotations

import hashlib


def leading_zero_bits(digest: bytes) -> int:
    """How many zero bits the digest starts with."""
    return len(digest) * 8 - int.from_bytes(digest, "big").bit_length()


def solves(puzzle: str, counter: str, difficulty: int) -> bool:
    """Whether SHA-256(puzzle ":" counter) starts with ``difficulty`` zero bits."""
    return leading_zero_bits(hashlib.sha256(f"{puzzle}:{counter}".encode()).digest()) >= difficulty


def solve(puzzle: str, difficulty: int, limit: int = 1 << 32) -> str:
    """The first decimal counter that solves a puzzle."""
    prefix = hashlib.sha256(f"{puzzle}:".encode())
    for counter in range(limit):
        digest = prefix.copy()
        digest.update(str(counter).encode())
        if leading_zero_bits(digest.digest()) >= difficulty:
            return str(counter)
    raise RuntimeError(f"no solution below {limit}")
