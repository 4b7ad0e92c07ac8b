"""Secure aggregation (Bonawitz et al., CCS 2017) over a SecAgg+ graph (Bell et al., CCS 2020).

Two pure state machines, no I/O: :class:`SecAggClient` and :class:`SecAggServer` consume and
produce the bytes of :mod:`privacy.messages`. The round coordinator carries those bytes over
HTTP and decides when a phase's deadline has passed (``close_*`` on the server). Clients are
numbered 0..n-1 in the cohort the server chose; the mapping to client ids is the coordinator's.

Phases (U1 ⊇ U2 ⊇ U3 ⊇ U5: who is still there at each):

0. CONFIG: the server publishes the round's public parameters (:class:`RoundConfig`).
1. ADVERTISE: each client sends two X25519 public keys, c_pk (to encrypt shares) and s_pk (to
   agree pairwise mask seeds). The server closes the phase and sends the ROSTER (U1).
2. SHARE_KEYS: each client picks a self-mask seed b, splits b and its mask private key s_sk into
   Shamir shares (threshold t) for its neighbours in U1, and encrypts each pair to that
   neighbour (AES-GCM under HKDF(X25519(c_sk, c_pk_v))). The server routes them (U2).
3. MASKED_INPUT: y_u = x_u + PRG(b_u) + sum over neighbours v in U2 of ±PRG(s_uv) mod 2^b,
   + when u < v, - when u > v; s_uv = HKDF(X25519(s_sk_u, s_pk_v), "mask", round) (U3).
4. UNMASK: the server names survivors (U3) and dropped clients (U2 - U3); each client reveals,
   for each neighbour, the b share of a survivor or the s_sk share of a dropped one, never
   both (U5). The server rebuilds the secrets from >= t shares each, removes the self masks of
   survivors and the pairwise masks that survivors shared with dropped clients, and the sum of
   U3's inputs remains.

The round aborts (:class:`RoundAborted`) when fewer than ``min_survivors`` (never below
:data:`MIN_COHORT`) remain at any phase; clients refuse to unmask for fewer. Threat model:
honest-but-curious server and clients (no signatures, so no defence against a server that lies
about who dropped beyond the client-side checks here). See docs/PROTOCOL.md.
"""

from __future__ import annotations

import math
import os
import secrets
import struct
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag

from . import ddg, dp, graph, quantize, shamir
from .messages import (
    MAGIC,
    SERVER,
    MessageError,
    ProtocolError,
    RoundConfig,
    Type,
    decode_words,
    encode_words,
    header,
    open_message,
)
from .primitives import KeyPair, agree, decrypt, encrypt, prg_words

MIN_COHORT = 3  # the sum of one or two updates is no secret
SHARE_BYTES = 33  # a 32-byte secret plus the x coordinate
B_SHARE, SK_SHARE = 0, 1
MAX_NOISE_STD = 2.0**32  # the browser's sampler draws its uniform offsets from 32-bit words


class RoundAborted(ProtocolError):
    """Too few clients remain for the round to complete safely."""


def min_survivors_for(cohort_size: int, min_cohort: int = MIN_COHORT) -> int:
    """The fewest of a cohort's clients a round may end with: max(min_cohort, ceil(2n/3))."""
    return max(min_cohort, math.ceil(2 * cohort_size / 3))


def make_config(round_id: int, cohort_size: int, num_params: int, *, bits: int = 16, clip: float = 1.0,
                degree: int | None = None, threshold: int | None = None, min_survivors: int | None = None,
                noise_multiplier: float = 0.0, graph_seed: bytes | None = None) -> RoundConfig:
    """A round's public parameters with the defaults of docs/PROTOCOL.md filled in.

    degree: graph.default_degree(n); threshold: graph.default_threshold(degree); min_survivors:
    max(3, ceil(2n/3)); scale: quantize.scale_for with room for the noise; noise_multiplier z > 0
    turns on distributed noise: each client adds privacy.dp.client_noise_std (quantized units).
    """
    degree = graph.default_degree(cohort_size) if degree is None else degree
    threshold = graph.default_threshold(degree) if threshold is None else threshold
    if min_survivors is None:
        min_survivors = min_survivors_for(cohort_size)
    # all n clients' noise shares, each sized for min_survivors: std 2z*sqrt(n/min_survivors) * norm bound
    noise_width = 2 * noise_multiplier * math.sqrt(cohort_size / max(1, min_survivors))
    scale = quantize.scale_for(bits, clip, cohort_size, noise_width, num_params)
    config = RoundConfig(
        round_id=round_id, cohort_size=cohort_size, degree=degree, threshold=threshold,
        min_survivors=min_survivors, bits=bits, num_params=num_params, scale=scale, clip=clip,
        graph_seed=secrets.token_bytes(32) if graph_seed is None else graph_seed,
        noise_std=dp.client_noise_std(noise_multiplier, quantize.norm_bound(clip, scale, num_params),
                                      max(1, min_survivors)))
    check_config(config)
    return config


def check_config(config: RoundConfig) -> None:
    """Refuse parameters under which the protocol is unsafe or cannot complete."""
    n, k, t = config.cohort_size, config.degree, config.threshold
    if n < MIN_COHORT:
        raise ProtocolError(f"a secure cohort needs at least {MIN_COHORT} clients, not {n}")
    if not MIN_COHORT <= config.min_survivors <= n:
        raise ProtocolError(f"min_survivors must be in {MIN_COHORT}..{n}")
    if k < n - 1 and (k < 2 or k % 2):
        raise ProtocolError("degree must be even (or n - 1 for a complete graph)")
    if min(k, n - 1) > shamir.MAX_SHARES:
        raise ProtocolError("degree above 255 (Shamir over GF(256))")
    if not (min(k, n - 1) // 2 < t <= min(k, n - 1) and t >= 2):
        raise ProtocolError("threshold must be above half the degree and at most the degree")
    if not 2 <= config.bits <= 32 or config.scale <= 0 or config.clip <= 0 or config.num_params < 1:
        raise ProtocolError("bits, scale, clip or num_params out of range")
    finite = math.isfinite(config.scale) and math.isfinite(config.clip)
    if not (finite and 0 <= config.noise_std < MAX_NOISE_STD):  # a NaN noise_std would skip the noise
        raise ProtocolError("scale and clip must be finite, noise_std in [0, 2^32)")
    if len(config.graph_seed) != 32:
        raise ProtocolError("graph seed must be 32 bytes")


def share_aad(round_id: int, sender: int, recipient: int) -> bytes:
    """Associated data of a share ciphertext: binds it to the round and both ends."""
    return MAGIC + struct.pack("<QII", round_id, sender, recipient)


def mask_sign(u: int, v: int) -> int:
    """The sign with which client u adds the pairwise mask it shares with v."""
    return 1 if u < v else -1


def word_dtype(config: RoundConfig) -> type[np.unsignedinteger]:
    """The word type of the wire width, uint16 or uint32.

    Its arithmetic wraps mod 2^(8*width), a multiple of 2^b, so sums and differences need
    reducing mod 2^b only once, at the end.
    """
    return np.uint16 if config.width == 2 else np.uint32


def reduce(config: RoundConfig, words: np.ndarray) -> np.ndarray:
    """Words mod 2^b, in place."""
    words &= word_dtype(config)((1 << config.bits) - 1)
    return words


def pairwise_mask(config: RoundConfig, seed: bytes) -> np.ndarray:
    """PRG(seed) as num_params words of the wire width (reduce mod 2^b after summing)."""
    return prg_words(seed, config.num_params, config.width)


def _read_roster(config: RoundConfig, data: bytes) -> dict[int, tuple[bytes, bytes]]:
    _, reader = open_message(data, Type.ROSTER, config.round_id)
    count = reader.u32()
    roster: dict[int, tuple[bytes, bytes]] = {}
    for _ in range(count):
        index, c_pk, s_pk = reader.unpack("I32s32s")
        if index >= config.cohort_size or index in roster:
            raise MessageError(f"roster entry {index} out of range or repeated")
        roster[index] = (c_pk, s_pk)
    reader.end()
    return roster


def noise_share(config: RoundConfig) -> np.ndarray | None:
    """A client's share of the round's noise: num_params draws of N_Z(0, noise_std^2) from a CSPRNG
    (privacy.ddg), or None without DP.
    """
    return ddg.discrete_gaussian(config.noise_std, config.num_params) if config.noise_std > 0 else None


class SecAggClient:
    """One client's side of one round. Call advertise, share_keys, masked_input, unmask in order."""

    def __init__(self, config: RoundConfig, index: int, rng: np.random.Generator | None = None):
        check_config(config)
        if not 0 <= index < config.cohort_size:
            raise ProtocolError(f"index {index} not in the cohort")
        self.config = config
        self.index = index
        self.rng = rng if rng is not None else np.random.default_rng()
        self.neighbours = set(graph.neighbours_of(config.graph_seed, config.round_id, config.cohort_size,
                                                  config.degree, index))
        self.c_keys = KeyPair.generate()
        self.s_keys = KeyPair.generate()
        self.peers: dict[int, tuple[bytes, bytes]] = {}  # neighbours in the roster -> (c_pk, s_pk)
        self.received: dict[int, tuple[bytes, bytes]] = {}  # neighbours in U2 -> (s_sk share, b share)
        self.b_seed = b""
        self.phase = Type.ADVERTISE

    def _enter(self, phase: int, following: int) -> None:
        if self.phase != phase:
            raise ProtocolError(f"client is in phase {self.phase}, not {phase}")
        self.phase = following

    def advertise(self) -> bytes:
        """ADVERTISE: the two public keys."""
        self._enter(Type.ADVERTISE, Type.ROSTER)
        head = header(Type.ADVERTISE, self.config.round_id, self.index)
        return head + self.c_keys.public + self.s_keys.public

    def share_keys(self, roster_message: bytes) -> bytes:
        """ROSTER in, SHARES out: Shamir shares of s_sk and a fresh b, encrypted to each neighbour."""
        self._enter(Type.ROSTER, Type.SHARES_FOR)
        roster = _read_roster(self.config, roster_message)
        if roster.get(self.index) != (self.c_keys.public, self.s_keys.public):
            raise ProtocolError("the roster does not carry this client's own keys")
        if len(roster) < self.config.min_survivors:
            raise RoundAborted(f"only {len(roster)} clients advertised keys")
        if len({keys for keys in roster.values()}) != len(roster):
            raise ProtocolError("two roster entries share a key")
        self.peers = {v: roster[v] for v in sorted(self.neighbours & set(roster))}
        if len(self.peers) < self.config.threshold:
            raise RoundAborted(f"{len(self.peers)} neighbours left, threshold {self.config.threshold}")
        self.b_seed = os.urandom(32)
        s_shares = shamir.split(self.s_keys.private, len(self.peers), self.config.threshold)
        b_shares = shamir.split(self.b_seed, len(self.peers), self.config.threshold)
        body = [struct.pack("<I", len(self.peers))]
        for (v, (c_pk, _)), s_share, b_share in zip(self.peers.items(), s_shares, b_shares, strict=True):
            key = agree(self.c_keys.private, c_pk, "enc", self.config.round_id)
            plain = struct.pack("<IIB", self.index, v, SHARE_BYTES) + s_share + b_share
            blob = encrypt(key, plain, share_aad(self.config.round_id, self.index, v))
            body.append(struct.pack("<II", v, len(blob)) + blob)
        return header(Type.SHARES, self.config.round_id, self.index) + b"".join(body)

    def masked_input(self, shares_message: bytes, delta: np.ndarray) -> bytes:
        """SHARES_FOR in, MASKED_INPUT out: the quantized delta under self and pairwise masks."""
        self._enter(Type.SHARES_FOR, Type.UNMASK_REQUEST)
        config = self.config
        _, reader = open_message(shares_message, Type.SHARES_FOR, config.round_id)
        for _ in range(reader.u32()):
            sender, length = reader.unpack("II")
            blob = reader.take(length)
            if sender not in self.peers or sender in self.received:
                raise ProtocolError(f"shares from {sender}, not an expected neighbour")
            key = agree(self.c_keys.private, self.peers[sender][0], "enc", config.round_id)
            try:
                plain = decrypt(key, blob, share_aad(config.round_id, sender, self.index))
            except InvalidTag:
                raise ProtocolError(f"shares from {sender} do not authenticate") from None
            if plain[:9] != struct.pack("<IIB", sender, self.index, SHARE_BYTES) or len(plain) != 9 + 66:
                raise ProtocolError(f"shares from {sender} are malformed")
            self.received[sender] = (plain[9:42], plain[42:75])
        reader.end()
        if len(self.received) < config.threshold:
            raise RoundAborted(f"shares from {len(self.received)} neighbours, threshold {config.threshold}")
        delta = np.asarray(delta, dtype=np.float64).ravel()
        if delta.size != config.num_params:
            raise ProtocolError(f"delta has {delta.size} values, the round {config.num_params}")
        value = quantize.encode(delta, config.bits, config.clip, config.scale, self.rng, noise_share(config))
        value = value.astype(word_dtype(config))
        value += pairwise_mask(config, self.b_seed)
        for v in sorted(self.received):
            seed = agree(self.s_keys.private, self.peers[v][1], "mask", config.round_id)
            if mask_sign(self.index, v) > 0:
                value += pairwise_mask(config, seed)
            else:
                value -= pairwise_mask(config, seed)
        reduce(config, value)
        return encode_words(Type.MASKED_INPUT, config.round_id, self.index, config.bits, value)

    def unmask(self, request: bytes) -> bytes:
        """UNMASK_REQUEST in, UNMASK out: for each neighbour in U2, one kind of share, never both."""
        self._enter(Type.UNMASK_REQUEST, Type.UNMASK)
        _, reader = open_message(request, Type.UNMASK_REQUEST, self.config.round_id)
        survivors = [reader.u32() for _ in range(reader.u32())]
        dropped = [reader.u32() for _ in range(reader.u32())]
        reader.end()
        alive, gone = set(survivors), set(dropped)
        if len(alive) != len(survivors) or len(gone) != len(dropped) or alive & gone:
            raise ProtocolError("survivor and dropped lists repeat or overlap")
        if len(alive) < self.config.min_survivors:
            raise RoundAborted(f"refusing to unmask a sum of {len(alive)} inputs "
                               f"(minimum {self.config.min_survivors})")
        if self.index not in alive:
            raise ProtocolError("this client sent its input but is not listed as a survivor")
        listed = (alive | gone) & self.neighbours
        if listed != set(self.received):
            raise ProtocolError("the request does not match the neighbours that shared keys")
        entries = []
        for v in sorted(self.received):
            s_share, b_share = self.received[v]
            kind, share = (B_SHARE, b_share) if v in alive else (SK_SHARE, s_share)
            entries.append(struct.pack("<IBB", v, kind, len(share)) + share)
        return (header(Type.UNMASK, self.config.round_id, self.index) + struct.pack("<I", len(entries))
                + b"".join(entries))


@dataclass
class Aggregate:
    """What a round produces: the sum of U3's inputs in Z_{2^b} and how many it holds."""

    total: np.ndarray
    count: int
    survivors: list[int]
    dropped: list[int]

    def mean(self, config: RoundConfig) -> np.ndarray:
        """The decoded float64 mean of the survivors' clipped deltas (equal weights)."""
        return quantize.decode_sum(self.total, config.bits, config.scale, self.count)


class SecAggServer:
    """The server's side of one round: collects, checks, routes, and finally unmasks the sum."""

    def __init__(self, config: RoundConfig):
        check_config(config)
        self.config = config
        self.graph = [set(peers) for peers in graph.neighbours(
            config.graph_seed, config.round_id, config.cohort_size, config.degree)]
        self.phase = Type.ADVERTISE
        self.keys: dict[int, tuple[bytes, bytes]] = {}  # U1
        self.shares: dict[int, dict[int, bytes]] = {}  # U2: sender -> recipient -> ciphertext
        self.inputs: set[int] = set()  # U3; their inputs are summed on arrival, never kept one by one
        self.total = np.zeros(config.num_params, dtype=word_dtype(config))
        self.responses: dict[int, list[tuple[int, int, bytes]]] = {}  # U5
        self.dropped: list[int] = []

    def _expect(self, phase: int) -> None:
        if self.phase != phase:
            raise ProtocolError(f"round is in phase {self.phase}, not {phase}")

    def _abort_below(self, count: int, what: str) -> None:
        if count < self.config.min_survivors:
            raise RoundAborted(f"{count} clients {what}; the round needs {self.config.min_survivors}")

    def config_message(self) -> bytes:
        """CONFIG, for every member of the cohort."""
        return self.config.encode()

    def receive_advertise(self, data: bytes) -> int:
        """Take one ADVERTISE; returns the sender's index."""
        self._expect(Type.ADVERTISE)
        sender, reader = open_message(data, Type.ADVERTISE, self.config.round_id)
        c_pk, s_pk = reader.take(32), reader.take(32)
        reader.end()
        if sender >= self.config.cohort_size or sender in self.keys:
            raise ProtocolError(f"advertise from {sender}: not in the cohort, or twice")
        self.keys[sender] = (c_pk, s_pk)
        return sender

    def roster(self) -> bytes:
        """Close ADVERTISE; the ROSTER of U1 for every client in it."""
        if self.phase == Type.ADVERTISE:
            self._abort_below(len(self.keys), "advertised keys")
            self.phase = Type.SHARES
        self._expect(Type.SHARES)
        body = b"".join(struct.pack("<I", v) + c + s for v, (c, s) in sorted(self.keys.items()))
        return header(Type.ROSTER, self.config.round_id, SERVER) + struct.pack("<I", len(self.keys)) + body

    def receive_shares(self, data: bytes) -> int:
        """Take one SHARES: exactly one ciphertext for each of the sender's neighbours in U1."""
        self._expect(Type.SHARES)
        sender, reader = open_message(data, Type.SHARES, self.config.round_id)
        if sender not in self.keys or sender in self.shares:
            raise ProtocolError(f"shares from {sender}: not in the roster, or twice")
        routed: dict[int, bytes] = {}
        for _ in range(reader.u32()):
            recipient, length = reader.unpack("II")
            if recipient in routed:
                raise ProtocolError(f"two shares for {recipient}")
            routed[recipient] = reader.take(length)
        reader.end()
        if set(routed) != self.graph[sender] & set(self.keys):
            raise ProtocolError(f"shares from {sender} are not addressed to its neighbours in the roster")
        self.shares[sender] = routed
        return sender

    def close_shares(self) -> None:
        """Close SHARE_KEYS: U2 is who sent shares."""
        self._expect(Type.SHARES)
        self._abort_below(len(self.shares), "shared keys")
        self.phase = Type.SHARES_FOR

    def shares_for(self, index: int) -> bytes:
        """SHARES_FOR client index: the ciphertexts that U2 addressed to it."""
        self._expect(Type.SHARES_FOR)
        entries = [struct.pack("<II", sender, len(routed[index])) + routed[index]
                   for sender, routed in sorted(self.shares.items()) if index in routed]
        return (header(Type.SHARES_FOR, self.config.round_id, SERVER) + struct.pack("<I", len(entries))
                + b"".join(entries))

    def receive_masked_input(self, data: bytes) -> int:
        """Take one MASKED_INPUT from a member of U2."""
        self._expect(Type.SHARES_FOR)
        sender, reader = open_message(data, Type.MASKED_INPUT, self.config.round_id)
        if sender not in self.shares or sender in self.inputs:
            raise ProtocolError(f"masked input from {sender}: it shared no keys, or sent twice")
        self.total += decode_words(reader, self.config.bits, self.config.num_params)
        self.inputs.add(sender)
        return sender

    def unmask_request(self) -> bytes:
        """Close MASKED_INPUT; the UNMASK_REQUEST naming survivors (U3) and dropped (U2 - U3)."""
        if self.phase == Type.SHARES_FOR:
            self._abort_below(len(self.inputs), "sent masked inputs")
            self.dropped = sorted(set(self.shares) - set(self.inputs))
            self.phase = Type.UNMASK
        self._expect(Type.UNMASK)
        survivors = sorted(self.inputs)
        return (header(Type.UNMASK_REQUEST, self.config.round_id, SERVER)
                + struct.pack(f"<I{len(survivors)}I", len(survivors), *survivors)
                + struct.pack(f"<I{len(self.dropped)}I", len(self.dropped), *self.dropped))

    def receive_unmask(self, data: bytes) -> int:
        """Take one UNMASK from a member of U3."""
        self._expect(Type.UNMASK)
        sender, reader = open_message(data, Type.UNMASK, self.config.round_id)
        if sender not in self.inputs or sender in self.responses:
            raise ProtocolError(f"unmask from {sender}: not a survivor, or twice")
        entries = []
        for _ in range(reader.u32()):
            owner, kind, length = reader.unpack("IBB")
            share = reader.take(length)
            expected = B_SHARE if owner in self.inputs else SK_SHARE if owner in self.dropped else None
            if kind != expected or length != SHARE_BYTES or owner not in self.graph[sender]:
                raise ProtocolError(f"unmask from {sender}: unexpected share of {owner}")
            entries.append((owner, kind, share))
        reader.end()
        self.responses[sender] = entries
        return sender

    def _collect(self, kind: int) -> dict[int, list[bytes]]:
        found: dict[int, list[bytes]] = {}
        for entries in self.responses.values():
            for owner, got_kind, share in entries:
                if got_kind == kind:
                    found.setdefault(owner, []).append(share)
        return found

    def _rebuild(self, owner: int, shares: list[bytes]) -> bytes:
        t = self.config.threshold
        if len(shares) < t:
            raise RoundAborted(f"{len(shares)} shares of client {owner}'s secret, threshold {t}")
        return shamir.combine(shares[:t])

    def finish(self) -> Aggregate:
        """Close UNMASK: rebuild the secrets, remove every mask, return the sum of U3's inputs."""
        self._expect(Type.UNMASK)
        self._abort_below(len(self.responses), "answered the unmask request")
        config = self.config
        total = self.total.copy()
        b_shares, sk_shares = self._collect(B_SHARE), self._collect(SK_SHARE)
        for u in sorted(self.inputs):
            total -= pairwise_mask(config, self._rebuild(u, b_shares.get(u, [])))
        for u in self.dropped:
            s_sk = self._rebuild(u, sk_shares.get(u, []))
            if KeyPair.from_private(s_sk).public != self.keys[u][1]:
                raise ProtocolError(f"the rebuilt mask key of client {u} does not match its s_pk")
            for v in sorted(self.graph[u] & set(self.inputs)):
                if v not in self.shares[u]:
                    continue  # u never addressed v, so v's input holds no mask shared with u
                seed = agree(s_sk, self.keys[v][1], "mask", config.round_id)
                if mask_sign(v, u) > 0:  # v added mask_sign(v, u) * PRG(s_uv): take it back
                    total -= pairwise_mask(config, seed)
                else:
                    total += pairwise_mask(config, seed)
        reduce(config, total)
        self.phase = Type.UNMASK + 1
        return Aggregate(total=total, count=len(self.inputs), survivors=sorted(self.inputs),
                         dropped=list(self.dropped))
