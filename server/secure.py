"""Secure rounds ([T1]): the glue between the round coordinator and ``privacy.secagg.SecAggServer``.

With ``AGGREGATION=secure`` a drawn cohort does not report plain updates: it moves through
``advertise`` → ``share_keys`` → ``masked_input`` → ``unmask`` (the ``rounds.phase`` column),
then the unmasked mean goes through the coordinator's usual close (server optimizer, publish
gate, versions). Members are numbered by their client ids in sorted order; each authenticates
every message with its round ticket, and may only send as its own index.

A phase closes when every client still expected in it has sent, or at its deadline
(``SECURE_PHASE_S``); fewer than ``min_survivors`` (at least ``SECURE_MIN_COHORT``) at any
close, or a secret that cannot be rebuilt, abandons the round: no aggregate, the cohort is
released and the next round selects afresh.

**Persistence.** Every accepted message is stored (``secure_messages``: round, phase, sender,
body) in the transaction that accepts it, and the round's CONFIG with its random graph seed
when the cohort is drawn. The state machine is deterministic given its messages and the phase
closes that ``rounds.phase`` records, so a restart replays them (``resume``) and loses nothing
that was accepted; once the round has ended they are deleted. Only masked inputs, public keys,
ciphertexts and unmask shares are ever stored: nothing is one client's update in clear.
Per-update defences (``INFLUENCE=bounded``) cannot see a masked input; clipping to
``SECURE_CLIP`` happens on the client (an honest one's influence; nothing enforces it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from privacy.messages import HEADER, ProtocolError, RoundConfig
from privacy.secagg import Aggregate, SecAggServer, make_config, min_survivors_for
from server import db, logs
from server.cohorts import PHASE_SELECTING
from server.refusals import (
    BadSecureMessage,
    NotSecure,
    NotSelected,
    RoundClosed,
    TicketExpired,
    TicketInvalid,
    WrongPhase,
    WrongSender,
)

if TYPE_CHECKING:
    from server.rounds import Coordinator

PHASES = ("advertise", "share_keys", "masked_input", "unmask")  # rounds.phase of a secure round, in order
MESSAGES = dict(zip(PHASES, ("advertise", "shares", "masked", "unmask"), strict=True))  # what each takes
PHASE_OF = {kind: phase for phase, kind in MESSAGES.items()}
DOWNLOADS = {"config": PHASES[0], "roster": PHASES[1], "shares": PHASES[2], "unmask": PHASES[3]}  # from
SERVER_SENDER = -1  # the stored CONFIG's sender


@dataclass(frozen=True)
class SecureRules:
    """The secure rounds' settings (SECURE_*; the clients add noise of DP_NOISE_MULTIPLIER before masking)."""

    clip: float = 1.0
    bits: int = 16
    min_cohort: int = 3
    phase_s: float = 60.0
    noise_multiplier: float = 0.0

    def config(self, round_id: int, cohort_size: int, num_params: int) -> RoundConfig:
        """The round's public parameters: min_survivors is max(min_cohort, ceil(2n/3))."""
        return make_config(round_id, cohort_size, num_params, bits=self.bits, clip=self.clip,
                           min_survivors=min_survivors_for(cohort_size, self.min_cohort),
                           noise_multiplier=self.noise_multiplier)


class SecureRound:
    """One open secure round: its state machine and the cohort index of each member."""

    def __init__(self, members: list[str], config: RoundConfig):
        self.members = sorted(members)
        self.index = {client_id: i for i, client_id in enumerate(self.members)}
        self.config = config
        self.server = SecAggServer(config)
        self.phase = PHASES[0]  # the phase this machine is in: every earlier one is closed here

    def senders(self, phase: str) -> tuple[set[int], set[int]]:
        """(who is expected to send in phase, who already did)."""
        s = self.server
        expected = {"advertise": set(range(len(self.members))), "share_keys": set(s.keys),
                    "masked_input": set(s.shares), "unmask": set(s.inputs)}[phase]
        sent = {"advertise": set(s.keys), "share_keys": set(s.shares), "masked_input": set(s.inputs),
                "unmask": set(s.responses)}[phase]
        return expected, sent

    def receive(self, phase: str, data: bytes) -> int:
        """Feed one message of phase to the state machine; the sender's index.

        :raise ProtocolError: refused; the state machine checks before it changes anything.
        """
        s = self.server
        take = {"advertise": s.receive_advertise, "share_keys": s.receive_shares,
                "masked_input": s.receive_masked_input, "unmask": s.receive_unmask}[phase]
        return take(data)

    def close(self, phase: str) -> None:
        """Close a phase before the last (:raise RoundAborted: below min_survivors)."""
        {"advertise": self.server.roster, "share_keys": self.server.close_shares,
         "masked_input": self.server.unmask_request}[phase]()
        self.phase = PHASES[PHASES.index(phase) + 1]

    def download(self, what: str, index: int) -> bytes:
        """What a member fetches: config, roster, its shares, the unmask request."""
        s = self.server
        return {"config": s.config_message, "roster": s.roster, "shares": lambda: s.shares_for(index),
                "unmask": s.unmask_request}[what]()

    def progress(self) -> dict:
        """Counts per phase for /api/status (never who)."""
        s = self.server
        return {"cohort": len(self.members), "min_survivors": self.config.min_survivors,
                "advertised": len(s.keys), "shared": len(s.shares), "masked": len(s.inputs),
                "unmasked": len(s.responses)}


class SecureAggregation:
    """The coordinator's secure mode: starts, runs, resumes and aborts secure rounds.

    Every method that reads or changes the round runs on this worker's turn (``_turn``): the
    round lock held exclusively across workers, after catching up with the messages and phase
    closes other workers stored, so several workers on PostgreSQL serve one secure round.
    """

    def __init__(self, rules: SecureRules):
        self.rules = rules
        self.round: SecureRound | None = None
        self.aggregate: Aggregate | None = None  # the unmasked sum, kept until the close succeeds

    # -- the coordinator's hooks -------------------------------------------------------------------

    def start(self, conn: db.Connection, round_id: int, members: list[str], num_params: int,
              now: float) -> tuple[str, float]:
        """A cohort was drawn: store the round's CONFIG; (first phase, its deadline)."""
        config = self.rules.config(round_id, len(members), num_params)
        db.add_secure_message(conn, round_id, "config", SERVER_SENDER, config.encode(), now)
        self.round, self.aggregate = SecureRound(members, config), None
        return PHASES[0], now + self.rules.phase_s

    def forget(self) -> None:
        """Drop the round in memory where it may be ahead of the database; the next turn reads it
        from the database. E.g. a draw that did not commit: were it kept, another worker's draw of
        the same round would not replace it, and this worker would serve its CONFIG (another random
        graph seed) to members of that draw.
        """
        self.round, self.aggregate = None, None

    def resume(self, conn: db.Connection, current: db.Round) -> None:
        """Rebuild the open round's state machine from its stored messages (start-up, a new round),
        and drop those of ended rounds: masked inputs (a megabyte per member) serve nothing after.
        """
        self.round, self.aggregate = None, None
        db.drop_secure_messages_before(conn, current.id)
        if current.phase not in PHASES:
            return
        stored = db.secure_messages_of(conn, current.id)
        config = RoundConfig.decode(next(body for kind, _, body in stored if kind == "config"))
        secure = SecureRound([client for client, _ in db.cohort(conn, current.id)], config)
        self._replay(secure, stored, current.phase)
        self.round = secure
        logs.event("secure_round_resumed", round=current.id, phase=current.phase, **secure.progress())

    def catch_up(self, conn: db.Connection, current: db.Round) -> None:
        """Take what other workers stored since this one last looked (several workers on
        PostgreSQL): a round drawn elsewhere is rebuilt from its messages, the open one is fed only
        the messages and phase closes this worker lacks. Cheap when nothing changed: one query of
        (kind, sender) pairs.
        """
        if self.round is None or self.round.config.round_id != current.id:
            if self.round is not None or current.phase in PHASES:
                self.resume(conn, current)
            return
        if current.phase not in PHASES:
            return
        sent = {kind: self.round.senders(phase)[1] for kind, phase in PHASE_OF.items()}
        missing = [(kind, sender) for kind, sender in db.secure_message_senders(conn, current.id)
                   if kind != "config" and sender not in sent[kind]]
        if missing or self.round.phase != current.phase:
            self._replay(self.round, db.secure_messages_of(conn, current.id, missing), current.phase)

    @staticmethod
    def _replay(secure: SecureRound, stored: list[tuple[str, int, bytes]], phase: str) -> None:
        """Feed stored messages to secure in phase order, closing each phase before phase (where
        the database has the round), from the phase the machine is in.
        """
        for at in PHASES[PHASES.index(secure.phase):PHASES.index(phase) + 1]:
            for kind, _, body in stored:
                if kind == MESSAGES[at]:
                    secure.receive(at, body)
            if at != phase:
                secure.close(at)

    def advance(self, coordinator: Coordinator, now: float) -> None:
        """Close the current phase when all expected sent or its deadline passed; abandon the round
        when too few remain; after the unmask phase, close the round through the coordinator. A
        round that began in plain mode (AGGREGATION changed across a restart) is abandoned.
        """
        with self._turn(coordinator):
            self._advance(coordinator, now)

    def _advance(self, coordinator: Coordinator, now: float) -> None:
        """``advance`` on this worker's turn."""
        if self.round is None and coordinator.round.phase not in (PHASE_SELECTING, *PHASES):
            coordinator.abandon_round("secure", "the round began in plain mode; a secure round starts "
                                      "from a new cohort", now)
            return
        while self.round is not None and coordinator.round.phase in PHASES:
            current = coordinator.round
            expected, sent = self.round.senders(current.phase)
            if sent != expected and now < current.deadline:
                return
            try:
                if current.phase == PHASES[-1]:
                    self.aggregate = self.aggregate or self.round.server.finish()
                else:
                    self.round.close(current.phase)
            except ProtocolError as exc:  # RoundAborted, or a secret that does not match its key
                coordinator.abandon_round("secure", f"secure round aborted in {current.phase}: {exc}", now)
                return
            if current.phase == PHASES[-1]:
                coordinator.close_secure(now)
                return
            following = PHASES[PHASES.index(current.phase) + 1]
            deadline = now + self.rules.phase_s
            try:
                with coordinator.writing() as conn:
                    db.set_phase(conn, current.id, following, deadline)
            except Exception:
                self._reload(coordinator)  # memory moved on, the database did not: take the database's
                raise
            coordinator.round = replace(current, phase=following, deadline=deadline)
            logs.event("secure_phase", round=current.id, phase=following, **self.round.progress())

    def mean_delta(self, parameters: list[dict]) -> dict[str, np.ndarray]:
        """The unmasked mean of the survivors' clipped deltas, shaped like the model."""
        assert self.aggregate is not None and self.round is not None, "no unmasked sum to close with"
        flat = self.aggregate.mean(self.round.config)
        out, offset = {}, 0
        for p in parameters:
            size = math.prod(p["shape"])
            out[p["name"]] = flat[offset:offset + size].reshape(p["shape"])
            offset += size
        return out

    def report(self) -> dict:
        """What the published version's manifest records about the secure round."""
        assert self.aggregate is not None and self.round is not None
        config = self.round.config
        return {"mode": "secure", "cohort": config.cohort_size, "survivors": self.aggregate.count,
                "dropped": len(self.aggregate.dropped), "clip": config.clip, "bits": config.bits,
                "scale": config.scale, "noise_std": config.noise_std}

    def progress(self) -> dict | None:
        """The open secure round's counts for /api/status (None between secure rounds)."""
        return self.round.progress() if self.round is not None else None

    # -- members' requests -------------------------------------------------------------------------

    def state(self, coordinator: Coordinator, ticket: str) -> dict:
        """Where the member's round stands: round, phase, index, cohort size, deadline."""
        with self._turn(coordinator):
            now = coordinator.clock()
            self._advance(coordinator, now)
            index = self._member(coordinator, ticket, now)
            assert self.round is not None
            return {"round": coordinator.round.id, "phase": coordinator.round.phase, "index": index,
                    "cohort_size": len(self.round.members), "deadline": coordinator.round.deadline}

    def fetch(self, coordinator: Coordinator, ticket: str, what: str) -> bytes:
        """A server message for the member: config, roster, shares (its own), unmask.

        :raise WrongPhase: before the phase that makes it exists.
        """
        with self._turn(coordinator):
            now = coordinator.clock()
            self._advance(coordinator, now)
            index = self._member(coordinator, ticket, now)
            assert self.round is not None
            if PHASES.index(coordinator.round.phase) < PHASES.index(DOWNLOADS[what]):
                raise WrongPhase(f"the round is in phase {coordinator.round.phase}; {what} comes with "
                                 f"phase {DOWNLOADS[what]}: ask again after the deadline")
            return self.round.download(what, index)

    def submit(self, coordinator: Coordinator, ticket: str, kind: str, data: bytes) -> dict:
        """Accept one member's message of the current phase: checked, stored, then fed to the state
        machine, all in one transaction; the phase closes at once if it was the last expected (a
        close that fails is logged and left to the next request or tick: the message stays accepted).

        :raise WrongPhase, WrongSender, BadSecureMessage, and the ticket refusals.
        """
        with self._turn(coordinator):
            now = coordinator.clock()
            self._advance(coordinator, now)
            index = self._member(coordinator, ticket, now)
            assert self.round is not None
            current = coordinator.round
            if MESSAGES[current.phase] != kind:
                raise WrongPhase(f"the round is in phase {current.phase}, which takes "
                                 f"{MESSAGES[current.phase]}, not {kind}")
            if len(data) < HEADER.size or HEADER.unpack_from(data)[3] != index:
                raise WrongSender(f"this ticket's member has index {index}; it may send only as itself")
            try:
                with coordinator.writing() as conn:
                    self.round.receive(current.phase, data)
                    db.add_secure_message(conn, current.id, kind, index, data, now)
            except ProtocolError as exc:
                raise BadSecureMessage(str(exc)) from None
            except Exception:
                self._reload(coordinator)  # accepted in memory, not stored: forget it
                raise
            logs.event("secure_message", round=current.id, phase=current.phase, sender=index,
                       bytes=len(data))
            try:
                self._advance(coordinator, now)
            except Exception:  # stored: the answer is 202 whatever closing the phase met (a 5xx says
                # "not stored", and the retry of a stored message is refused as sent twice); the
                # next request or tick closes the phase
                logs.event("secure_advance_failed", level=logging.ERROR, exc_info=True, round=current.id)
            return {"accepted": True, "round": current.id, "phase": coordinator.round.phase}

    # -- helpers -----------------------------------------------------------------------------------

    @contextmanager
    def _turn(self, coordinator: Coordinator) -> Iterator[None]:
        """Our worker's turn at the secure round: the round lock held exclusively (no other
        worker changes the round meanwhile), caught up with what the others stored.
        """
        with coordinator.exclusive_round():
            try:
                with db.transaction(coordinator.engine) as conn:
                    self.catch_up(conn, coordinator.round)
            except Exception:  # memory and database disagree: rebuild from the database
                self._reload(coordinator)
            yield

    def _member(self, coordinator: Coordinator, ticket: str, now: float) -> int:
        """The cohort index of the ticket's member in the open secure round.

        :raise TicketInvalid, TicketExpired, RoundClosed, NotSecure, NotSelected.
        """
        with db.transaction(coordinator.engine) as conn:
            found = db.find_ticket(conn, db.ticket_digest(ticket))
        if found is None:
            raise TicketInvalid("unknown ticket; a cohort member gets one from POST /api/tickets")
        if found.expires_at <= now:
            raise TicketExpired("the ticket expired; check in again")
        if found.round_id != coordinator.round.id:
            raise RoundClosed(f"the ticket is for round {found.round_id}, which has ended; check in again")
        if self.round is None:
            raise NotSecure(f"round {coordinator.round.id} is in phase {coordinator.round.phase}, not a "
                            "secure phase")
        if found.client_id not in self.round.index:
            raise NotSelected(f"client {found.client_id} is not in round {coordinator.round.id}'s cohort")
        return self.round.index[found.client_id]

    def _reload(self, coordinator: Coordinator) -> None:
        """Rebuild from the database after a failure that may have left memory ahead of it; if the
        database fails again (it restarts), drop the round in memory, which the next turn rebuilds:
        kept, it would hold a message never stored and refuse that message's retry as sent twice.
        """
        try:
            with db.transaction(coordinator.engine) as conn:
                coordinator.round = db.current_round(conn)
                self.resume(conn, coordinator.round)
        except Exception:
            self.forget()
            raise
