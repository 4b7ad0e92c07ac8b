"""Identities that cost an attacker something: proof of work, network caps, operator tokens.

Made-up client ids are free, so a client id alone cannot bound one script's share of a cohort.
Each defence here is a small pure piece with its own attacker (docs/SECURITY.md):

- ``WorkPuzzles``: hashcash over SHA-256 at enrollment. The puzzle is stateless and signed
  (HMAC), so issuing one writes nothing; solving it costs the client ~2^difficulty hashes
  (about a second in a browser at the default), so ten thousand ids cost hours of CPU.
- ``network_of``: the IPv4 /24 or IPv6 /56 an address belongs to, the unit of per-network caps.
  One host (or one cloud subnet) then lands at most N members of a cohort whatever ids it invents.
- ``EnrollmentTokens``: the operator's own login system signs "this client id may enroll until T"
  with HMAC-SHA256 or Ed25519; the server only verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import struct
import threading
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from formats.pow import solves

PUZZLE_VERSION = 1
NONCE_BYTES = 16
_PUZZLE = struct.Struct(">BB16sQ")  # version, difficulty, nonce, expires (unix seconds)
MAX_COUNTER_CHARS = 20


class IdentityError(ValueError):
    """A refused proof of identity; ``code`` is the stable wire code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _b64(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str, code: str) -> bytes:
    if not isinstance(text, str) or len(text) > 256:
        raise IdentityError(code, "malformed base64url field")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise IdentityError(code, "malformed base64url field") from None


@dataclass(frozen=True)
class Puzzle:
    """What the server hands out: the signed puzzle text and its difficulty."""

    puzzle: str
    difficulty: int
    expires: int


class WorkPuzzles:
    """Issue signed hashcash puzzles and accept each solution once before it expires."""

    def __init__(self, difficulty: int, ttl_s: float, key: bytes | None = None, max_spent: int = 1_000_000):
        assert 0 <= difficulty <= 32, "difficulty is a number of leading zero bits, 0..32"
        self.difficulty, self.ttl_s, self.max_spent = difficulty, ttl_s, max_spent
        self.key = key or secrets.token_bytes(32)  # a restart voids outstanding puzzles: harmless
        self._spent: dict[bytes, int] = {}  # nonce -> expiry; solutions are single-use
        self._lock = threading.Lock()

    def issue(self, now: float) -> Puzzle:
        """A fresh puzzle; nothing is stored."""
        expires = int(now + self.ttl_s)
        body = _PUZZLE.pack(PUZZLE_VERSION, self.difficulty, secrets.token_bytes(NONCE_BYTES), expires)
        tag = hmac.new(self.key, body, hashlib.sha256).digest()[:16]
        return Puzzle(_b64(body + tag), self.difficulty, expires)

    def redeem(self, puzzle: str, counter: str, now: float) -> None:
        """Accept a solved puzzle once.

        :raise IdentityError: puzzle_invalid (forged, malformed), puzzle_expired, puzzle_unsolved,
            puzzle_reused.
        """
        raw = _unb64(puzzle, "puzzle_invalid")
        if len(raw) != _PUZZLE.size + 16:
            raise IdentityError("puzzle_invalid", "malformed puzzle")
        body, tag = raw[:_PUZZLE.size], raw[_PUZZLE.size:]
        if not hmac.compare_digest(tag, hmac.new(self.key, body, hashlib.sha256).digest()[:16]):
            raise IdentityError("puzzle_invalid", "this server did not issue that puzzle")
        _, difficulty, nonce, expires = _PUZZLE.unpack(body)
        if expires <= now:
            raise IdentityError("puzzle_expired", "the puzzle expired; fetch a new one")
        if not (isinstance(counter, str) and counter.isdigit() and len(counter) <= MAX_COUNTER_CHARS):
            raise IdentityError("puzzle_unsolved", "counter must be a decimal string")
        if not solves(puzzle, counter, difficulty):
            raise IdentityError("puzzle_unsolved", f"sha256(puzzle:counter) must start with {difficulty} "
                                                   "zero bits")
        with self._lock:
            if nonce in self._spent:
                raise IdentityError("puzzle_reused", "this puzzle was already redeemed")
            if len(self._spent) >= self.max_spent:
                self._spent = {n: e for n, e in self._spent.items() if e > now}
            if len(self._spent) >= self.max_spent:
                raise IdentityError("puzzle_busy", "too many outstanding enrollments; retry later")
            self._spent[nonce] = expires


def network_of(address: str, v4_prefix: int = 24, v6_prefix: int = 56) -> str:
    """The network an address counts against: its IPv4 /24 or IPv6 /56 (IPv4-mapped IPv6 as IPv4).

    :raise ValueError: for something that is not an IP address.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = v4_prefix if ip.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class EnrollmentTokens:
    """Verify operator-signed tokens ``<client_id>.<expires>.<signature>`` (base64url signature).

    The signed message is ``fedurl-enroll:<client_id>:<expires>``; HMAC-SHA256 with a shared
    secret, or Ed25519 with the operator's public key (the server then holds no signing secret).
    """

    def __init__(self, hmac_key: bytes | None = None, ed25519_public_key: bytes | None = None):
        if (hmac_key is None) == (ed25519_public_key is None):
            raise ValueError("give exactly one of hmac_key and ed25519_public_key")
        if hmac_key is not None and len(hmac_key) < 32:
            raise ValueError("an HMAC enrollment key needs at least 32 bytes")
        self.hmac_key = hmac_key
        self.public_key = (Ed25519PublicKey.from_public_bytes(ed25519_public_key)
                           if ed25519_public_key is not None else None)

    @staticmethod
    def message(client_id: str, expires: int) -> bytes:
        """The bytes an operator signs."""
        return f"fedurl-enroll:{client_id}:{expires}".encode()

    def verify(self, token: str, client_id: str, now: float) -> None:
        """Accept a token for client_id that has not expired.

        :raise IdentityError: token_invalid or token_expired.
        """
        parts = token.split(".") if isinstance(token, str) and len(token) <= 512 else []
        if len(parts) != 3 or parts[0] != client_id or not parts[1].isdigit() or len(parts[1]) > 12:
            raise IdentityError("token_invalid", "enrollment token is malformed or for another client id")
        expires, signature = int(parts[1]), _unb64(parts[2], "token_invalid")
        message = self.message(client_id, expires)
        if self.hmac_key is not None:
            valid = hmac.compare_digest(signature, hmac.new(self.hmac_key, message, hashlib.sha256).digest())
        else:
            assert self.public_key is not None
            try:
                self.public_key.verify(signature, message)
                valid = True
            except InvalidSignature:
                valid = False
        if not valid:
            raise IdentityError("token_invalid", "enrollment token signature does not verify")
        if expires <= now:
            raise IdentityError("token_expired", "enrollment token expired")


class Enrollment:
    """The proofs a new client id must give, as the IDENTITY setting picks them (each optional).

    An operator token is checked before the puzzle, so a refused token spends no solved puzzle.
    """

    def __init__(self, proofs: list[str], puzzles: WorkPuzzles | None = None,
                 tokens: EnrollmentTokens | None = None):
        assert "pow" not in proofs or puzzles is not None, "pow needs WorkPuzzles"
        assert "token" not in proofs or tokens is not None, "token needs EnrollmentTokens"
        self.proofs, self.puzzles, self.tokens = list(proofs), puzzles, tokens

    @property
    def required(self) -> bool:
        """Whether a client id must enroll at all before it checks in."""
        return bool(self.proofs)

    def verify(self, body: dict, client_id: str, now: float) -> str:
        """Check every required proof in an enrollment request; return their names ("pow+token").

        :raise IdentityError: the first proof that fails.
        """
        if "token" in self.proofs:
            assert self.tokens is not None
            self.tokens.verify(body.get("token"), client_id, now)  # type: ignore[arg-type]  # checked there
        if "pow" in self.proofs:
            assert self.puzzles is not None
            self.puzzles.redeem(body.get("puzzle"), body.get("counter"), now)  # type: ignore[arg-type]
        return "+".join(self.proofs) or "none"


def enrollment_from(proofs: list[str], difficulty: int, ttl_s: float, hmac_key: str | None,
                    ed25519_public_key_hex: str | None) -> Enrollment:
    """The enrollment policy from settings (keys as text: HMAC key bytes, Ed25519 key in hex)."""
    tokens = None
    if hmac_key:
        tokens = EnrollmentTokens(hmac_key=hmac_key.encode())
    elif ed25519_public_key_hex:
        tokens = EnrollmentTokens(ed25519_public_key=bytes.fromhex(ed25519_public_key_hex))
    return Enrollment(proofs, WorkPuzzles(difficulty, ttl_s) if "pow" in proofs else None, tokens)
