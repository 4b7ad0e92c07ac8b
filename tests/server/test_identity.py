"""server/identity.py: puzzles cost work and are single-use, networks group addresses, tokens verify."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from formats.pow import leading_zero_bits, solve, solves
from server.identity import EnrollmentTokens, IdentityError, WorkPuzzles, network_of

NOW = 1_700_000_000.0


def test_leading_zero_bits_counts_bits_not_bytes():
    assert leading_zero_bits(bytes([0, 0, 0x10, 0xFF])) == 19
    assert leading_zero_bits(bytes([0x80])) == 0
    assert leading_zero_bits(bytes(4)) == 32


def test_a_solved_puzzle_is_accepted_once():
    puzzles = WorkPuzzles(difficulty=8, ttl_s=60)
    issued = puzzles.issue(NOW)
    counter = solve(issued.puzzle, issued.difficulty)
    puzzles.redeem(issued.puzzle, counter, NOW + 1)
    with pytest.raises(IdentityError) as error:
        puzzles.redeem(issued.puzzle, counter, NOW + 2)
    assert error.value.code == "puzzle_reused"


def test_solving_costs_about_two_to_the_difficulty_hashes():
    """Mean tries over 40 puzzles at 10 bits is near 1024 (geometric: within a factor of 2)."""
    puzzles = WorkPuzzles(difficulty=10, ttl_s=60)
    tries = [int(solve(puzzles.issue(NOW).puzzle, 10)) + 1 for _ in range(40)]
    assert 512 < sum(tries) / len(tries) < 2048


@pytest.mark.parametrize("tamper, code", [
    (lambda p, c: (p, next(str(n) for n in range(99) if not solves(p, str(n), 12))), "puzzle_unsolved"),
    (lambda p, c: (p[:-2] + ("AA" if p[-2:] != "AA" else "BB"), c), "puzzle_invalid"),
    (lambda p, c: ("not base64 !", c), "puzzle_invalid"),
    (lambda p, c: (p, "-1"), "puzzle_unsolved"),
    (lambda p, c: (p, "9" * 21), "puzzle_unsolved"),
])
def test_forged_or_unsolved_puzzles_are_refused(tamper, code):
    puzzles = WorkPuzzles(difficulty=12, ttl_s=60)
    issued = puzzles.issue(NOW)
    puzzle, counter = tamper(issued.puzzle, solve(issued.puzzle, 12))
    with pytest.raises(IdentityError) as error:
        puzzles.redeem(puzzle, counter, NOW)
    assert error.value.code == code


def test_a_puzzle_of_another_server_or_past_its_expiry_is_refused():
    ours, theirs = WorkPuzzles(difficulty=4, ttl_s=60), WorkPuzzles(difficulty=4, ttl_s=60)
    foreign = theirs.issue(NOW)
    with pytest.raises(IdentityError, match="did not issue"):
        ours.redeem(foreign.puzzle, solve(foreign.puzzle, 4), NOW)
    issued = ours.issue(NOW)
    with pytest.raises(IdentityError) as error:
        ours.redeem(issued.puzzle, solve(issued.puzzle, 4), NOW + 61)
    assert error.value.code == "puzzle_expired"


def test_the_difficulty_is_signed_so_a_client_cannot_lower_it():
    puzzles = WorkPuzzles(difficulty=16, ttl_s=60)
    raw = bytearray(base64.urlsafe_b64decode(puzzles.issue(NOW).puzzle + "=="))
    raw[1] = 0  # difficulty byte -> 0: any counter would do
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(IdentityError, match="did not issue"):
        puzzles.redeem(forged, "0", NOW)


@pytest.mark.parametrize("address, network", [
    ("203.0.113.7", "203.0.113.0/24"), ("203.0.113.250", "203.0.113.0/24"), ("203.0.114.1", "203.0.114.0/24"),
    ("2001:db8:abcd:12ff::1", "2001:db8:abcd:1200::/56"), ("::ffff:198.51.100.9", "198.51.100.0/24"),
])
def test_network_of_groups_addresses_by_prefix(address, network):
    assert network_of(address) == network


def test_network_of_refuses_what_is_not_an_address():
    with pytest.raises(ValueError):
        network_of("example.com")


def _hmac_token(key: bytes, client_id: str, expires: int) -> str:
    signature = hmac.new(key, EnrollmentTokens.message(client_id, expires), hashlib.sha256).digest()
    return f"{client_id}.{expires}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def test_hmac_tokens_verify_for_their_client_until_they_expire():
    key = b"k" * 32
    tokens = EnrollmentTokens(hmac_key=key)
    token = _hmac_token(key, "alice", int(NOW) + 60)
    tokens.verify(token, "alice", NOW)
    for client, at, code in [("bob", NOW, "token_invalid"), ("alice", NOW + 61, "token_expired")]:
        with pytest.raises(IdentityError) as error:
            tokens.verify(token, client, at)
        assert error.value.code == code
    with pytest.raises(IdentityError, match="does not verify"):
        tokens.verify(_hmac_token(b"x" * 32, "alice", int(NOW) + 60), "alice", NOW)


def test_ed25519_tokens_verify_with_the_operators_public_key_only():
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    tokens = EnrollmentTokens(ed25519_public_key=public)
    expires = int(NOW) + 60
    signed = private.sign(EnrollmentTokens.message("carol", expires))
    signature = base64.urlsafe_b64encode(signed).rstrip(b"=")
    tokens.verify(f"carol.{expires}.{signature.decode()}", "carol", NOW)
    with pytest.raises(IdentityError):
        tokens.verify(f"carol.{expires + 1}.{signature.decode()}", "carol", NOW)


def test_short_hmac_keys_are_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        EnrollmentTokens(hmac_key=b"short")
