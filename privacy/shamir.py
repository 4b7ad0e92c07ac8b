"""Shamir t-of-n secret sharing over GF(2^8), in the share format of npm ``shamir-secret-sharing``.

The browser uses that audited library (privy-io, 0.0.4, itself a port of HashiCorp Vault's
``shamir``); this is its Python twin, written against the same definition and tested against it
both ways (tests/web/test_secagg.py):

- the field is GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11B);
- each byte of the secret is the constant term of its own random polynomial of degree t - 1;
- a share is ``len(secret) + 1`` bytes: the polynomials' values at x, then x itself (1..255);
  x coordinates are distinct and random per split;
- combining is Lagrange interpolation at 0 over the given shares. Like the library, it cannot
  tell whether it was given t shares: fewer give a wrong secret silently, so callers count.

Vectorised over the secret's bytes with numpy (the server reconstructs thousands per round).
"""

from __future__ import annotations

import secrets

import numpy as np

MAX_SHARES = 255


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """The exp and log tables of GF(2^8) mod 0x11B with generator 0xE5 (Vault's and the library's)."""

    def slow_mul(a: int, b: int) -> int:
        product = 0
        while b:
            if b & 1:
                product ^= a
            a = (a << 1) ^ (0x11B if a & 0x80 else 0)
            b >>= 1
        return product

    exp = np.zeros(510, dtype=np.uint8)  # doubled so exp[log a + log b] needs no modulo
    log = np.zeros(256, dtype=np.int64)
    value = 1
    for power in range(255):
        exp[power] = exp[power + 255] = value
        log[value] = power
        value = slow_mul(value, 0xE5)
    assert value == 1 and len(set(exp[:255].tolist())) == 255, "0xE5 must generate GF(256)*"
    return exp, log


EXP, LOG = _tables()


def _mul(a: np.ndarray, b: int) -> np.ndarray:
    """Element-wise a * b in GF(2^8) for a byte array a and one field element b."""
    if b == 0:
        return np.zeros_like(a)
    out = EXP[LOG[a] + LOG[b]]
    out[a == 0] = 0
    return out


def _mul1(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else int(EXP[LOG[a] + LOG[b]])


def _div1(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(256)")
    return 0 if a == 0 else int(EXP[(LOG[a] - LOG[b]) % 255])


def split(secret: bytes, shares: int, threshold: int) -> list[bytes]:
    """Split secret into shares shares, any threshold of which recover it (2 <= t <= n <= 255)."""
    if not secret:
        raise ValueError("secret cannot be empty")
    if not 2 <= threshold <= shares <= MAX_SHARES:
        raise ValueError(f"need 2 <= threshold ({threshold}) <= shares ({shares}) <= {MAX_SHARES}")
    xs = secrets.SystemRandom().sample(range(1, 256), shares)
    intercepts = np.frombuffer(secret, dtype=np.uint8)
    coefficients = np.frombuffer(secrets.token_bytes(len(secret) * (threshold - 1)), dtype=np.uint8)
    coefficients = coefficients.reshape(threshold - 1, len(secret))
    out = []
    for x in xs:
        value = coefficients[-1].copy() if threshold > 1 else intercepts.copy()
        for row in coefficients[-2::-1]:  # Horner, highest degree first
            value = _mul(value, x) ^ row
        value = _mul(value, x) ^ intercepts
        out.append(value.tobytes() + bytes([x]))
    return out


def combine(shares: list[bytes]) -> bytes:
    """The secret behind shares (at least threshold of them, else a wrong value comes back)."""
    if not 2 <= len(shares) <= MAX_SHARES:
        raise ValueError(f"need 2 to {MAX_SHARES} shares, got {len(shares)}")
    length = len(shares[0])
    if length < 2 or any(len(share) != length for share in shares):
        raise ValueError("shares must all have the same length of at least 2 bytes")
    xs = [share[-1] for share in shares]
    if len(set(xs)) != len(xs) or 0 in xs:
        raise ValueError("share x coordinates must be distinct and non-zero")
    secret = np.zeros(length - 1, dtype=np.uint8)
    for i, x_i in enumerate(xs):
        basis = 1  # Lagrange basis polynomial l_i at 0: prod x_j / (x_i - x_j); minus is xor
        for j, x_j in enumerate(xs):
            if i != j:
                basis = _mul1(basis, _div1(x_j, x_i ^ x_j))
        secret ^= _mul(np.frombuffer(shares[i][:-1], dtype=np.uint8), basis)
    return secret.tobytes()
