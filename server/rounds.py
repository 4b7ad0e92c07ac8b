"""The round coordinator: tickets, accepted updates, closing rounds, rollback.

One ``Coordinator`` per worker process; the open round lives in the database and the spool, not
in memory, so several workers (on PostgreSQL) serve one federation. An update is committed (its
row and its used ticket in the database, its delta bytes fsynced to the spool, ``server.spool``)
before the client hears 202, and that is all a worker does with it: no worker holds a running
sum. The worker that closes the round holds the round lock (``db.round_lock``: a PostgreSQL
advisory lock, which every upload holds shared while it commits), so no upload is in flight
anywhere; it reads the round's rows, feeds every stored delta, checked again, to a fresh
aggregation strategy (``server.recovery.replay``, as at start-up) and publishes. Closing writes
the next version directory atomically (``server.versions``), then records it, closes the round
and opens the next in one transaction. A crash between the two leaves an unknown directory that
start-up clears away and a still-open round that closes again with the same updates. That
transaction runs on the round lock's own connection (``writing``, ``db.fenced``): were the
connection cut mid-close, PostgreSQL would release the lock to another worker, and the cut
connection can commit nothing, so only a worker that held the lock throughout publishes. Each
request first catches up with what other workers did (``_sync``). Within a process, one lock
serializes the threads; SQLite has one process (``db.shares_workers``).

The coordinator knows neither HTTP nor SQL nor the aggregation math: refusals are
``server.refusals`` exceptions, statements are ``server.db`` functions, and the round's deltas go
to an ``Aggregator`` (``server.strategies``) and a ``ServerOptimizer`` (``server.aggregate``),
each built by a factory from the settings.

Staleness (docs/PROTOCOL.md): a delta computed on version b is accepted while the current version
descends from b by at most MAX_STALENESS steps, with weight num_examples * (1 + s)^-exponent
(Xie et al. 2019); after a rollback the abandoned branch is no ancestor, so its deltas are refused.

Phases ([T2], ``server.cohorts``): with server-chosen cohorts a round opens ``selecting``
(clients check in), draws its cohort, then runs ``reporting`` (only members get tickets, only
tickets of this round count) until the goal count or the deadline; too few reports by then and
the round is *abandoned* and a new one selects afresh on the same version. Before publishing, the
``gate`` scores the candidate; a refused candidate ends the round as *refused* and the parent
stays current. With open selection (``RoundRules.cohort`` None) rounds start in ``reporting``.

FedBuff ([X], ``SCHEDULE=buffered``, Nguyen et al. AISTATS 2022): no cohort and no deadline; any
client takes a ticket for the current version and trains when it can, and every ``min_clients``
(K) accepted updates make one server step, with the staleness weights above. The round is the
buffer: it closes at exactly K. Uploads that committed while the K-th was closing the round (on
other workers) are not folded into this step: they move, row and body, into the next round in the
transaction that opens it (``_carry``), and are the first of the next buffer. With no cohort to
cap them, a buffer takes at most ``per_network`` updates of one /24 or /56: each takes a seat of
its network under a unique (round, network, seat) key (``_seat``), exact across workers.

Secure rounds ([T1], ``AGGREGATION=secure``): the drawn cohort runs ``server.secure``'s phases
(advertise, share_keys, masked_input, unmask) instead of reporting, and the close takes the
unmasked mean; the hooks into it are marked ``[T1]`` here, the logic is in server/secure.py.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from formats.update import UpdateMeta
from server import cohorts, db, logs, quarantine, recovery
from server.aggregate import ServerOptimizer, staleness_weight, unsafe_weights
from server.cohorts import PHASE_REPORTING, PHASE_SELECTING, CohortRules
from server.refusals import (
    DuplicateClient,
    EmptyRound,
    NetworkFull,
    NoSuchVersion,
    NotEarlier,
    NotSelected,
    RoundClosed,
    SecureOnly,
    StaleVersion,
    TicketExpired,
    TicketInvalid,
    TicketMismatch,
    TicketReused,
    TicketSpent,
    UnknownBaseVersion,
    UnsafeWeights,
    VersionDamaged,
    VersionMismatch,
)
from server.secure import SecureAggregation
from server.spool import Spool
from server.strategies import Aggregator
from server.versions import WEIGHTS, VersionStore, iso

# Refusals of an upload for what it says itself (its base version, its round, its client): tried
# again as it is, it would be refused again, so its ticket is spent (Coordinator._spend_ticket)
SPENDS_TICKET = (UnknownBaseVersion, StaleVersion, VersionMismatch, RoundClosed, DuplicateClient)


@dataclass(frozen=True)
class RoundRules:
    """When rounds close and which updates count."""

    min_clients: int
    floor: int
    deadline_s: float
    ticket_ttl_s: float
    max_staleness: int
    staleness_exponent: float
    max_update_norm: float = math.inf  # checked again when a stored body is replayed
    max_weight_abs: float = math.inf  # the last check before publishing
    cohort: CohortRules | None = None  # None: open selection, any client may take a ticket
    buffered: bool = False  # FedBuff: a step at exactly min_clients updates, no deadline
    per_network: int = 1  # FedBuff: a buffer's updates from one /24 or /56 at most (MAX_MEMBERS_PER_NETWORK)


class _Collided(Exception):
    """An update's insert hit a unique key that a concurrent upload's commit took first: the
    (round, client) key, or the (round, network, seat) one when seat is not None.
    """

    def __init__(self, round_id: int, seat: int | None):
        super().__init__(round_id, seat)
        self.round_id, self.seat = round_id, seat


@dataclass(frozen=True)
class Verdict:
    """The publish gate's answer on a candidate: publish or not, and why, for people."""

    ok: bool
    detail: str
    scores: dict | None = None  # e.g. {"parent_loss": 3.9, "candidate_loss": 4.4}


Gate = Callable[[int, dict], Verdict]  # (parent version, candidate weights) -> verdict


@dataclass(frozen=True)
class Progress:
    """The live state of the federation, for /api/status: what only memory knows."""

    version: int
    optimizer: str
    aggregator: str
    round: db.Round
    updates: int
    rules: RoundRules
    report: dict  # the strategy's account of the last round it closed (clip bound, caps)


class Coordinator:
    """Serves the current version and turns accepted updates into the next one."""

    def __init__(self, engine: db.Engine, store: VersionStore, rules: RoundRules,
                 new_optimizer: Callable[[], ServerOptimizer], new_aggregator: Callable[[], Aggregator],
                 clock: Callable[[], float] = time.time, gate: Gate | None = None,
                 secure: SecureAggregation | None = None):
        """:param new_optimizer: zero-argument factory of a fresh server optimizer (strategy alike).
        :param gate: scores a candidate before it is published (None: publish every safe result).
        :param secure: [T1] secure aggregation (server/secure.py): cohorts send masked inputs, not updates.
        """
        self.engine, self.store, self.rules = engine, store, rules
        self.new_optimizer, self.clock, self.gate = new_optimizer, clock, gate
        self.rng: random.Random | None = None  # cohort draws: the OS's randomness unless a test seeds it
        self.new_aggregator = new_aggregator
        self.aggregator = new_aggregator()  # the strategy of the last round this worker closed
        self.spool = Spool(store.data_dir)
        self.lock = threading.RLock()
        self.exclusive = 0  # depth of _exclusive blocks this process is in (under self.lock)
        self.fence: db.Connection | None = None  # the round lock's own connection while held (PostgreSQL)
        self.parents: dict[int, int | None] = {}
        self.round: db.Round  # the open round as this worker last read it; set by start
        self.secure = secure
        self.opened: tuple[int, Aggregator] | None = None  # (round id, strategy started on its carry)

    # -- start-up and the current version ---------------------------------------------------------

    def start(self, bundle_dir: str | None, make_gate: Callable[[dict], Gate | None] | None = None) -> None:
        """Import the first version if the database has none, clear debris, resume the open round.

        :param make_gate: builds the publish gate from the current manifest, before a replayed
            round can close.
        """
        with self._exclusive(sync=False):  # another worker may be starting or publishing
            self.parents = recovery.known_versions(self.writing, self.store, self.clock())
            if not self.parents:
                self.parents = recovery.import_first_version(self.engine, self.store, bundle_dir,
                                                             self.clock(), self.rules.deadline_s,
                                                             self._first_phase())
            self._load(max(self.parents))
            recovery.check_same_graphs(self.store.data_dir, self.manifest, bundle_dir)
            if make_gate is not None:
                self.gate = make_gate(self.manifest)
            self._gather()  # checks every stored body now: a damaged one is quarantined at start
            self._resume()

    @contextmanager
    def _exclusive(self, sync: bool = True) -> Iterator[None]:
        """Make this worker the only one that may change the round: hold the round lock (no upload
        in flight on any worker) and, with sync, catch up with the database first.
        """
        with self.lock:
            if self.exclusive:
                yield
                return
            with db.round_lock(self.engine) as fence:
                self.exclusive, self.fence = self.exclusive + 1, fence
                try:
                    if sync:
                        with db.transaction(self.engine) as conn:
                            self._sync(conn)
                    yield
                finally:
                    self.exclusive, self.fence = self.exclusive - 1, None

    def writing(self) -> AbstractContextManager[db.Connection]:
        """The transaction of a change to the round (a cohort draw, a publish, a restart, the
        read-back's quarantines and sweep, start-up's debris; [T1] a secure round's phase moves and
        messages): on the round lock's own connection while this worker holds it (``db.fenced``: a
        commit there proves that the lock was never lost, so a worker whose lock connection dropped
        mid-close commits nothing), else a pooled one (SQLite, one process). Only under
        ``self._exclusive``, as every change of the round: the lock's connection belongs to the
        thread that holds it.

        :raise RuntimeError: called outside ``_exclusive`` where several workers share the
            database (a bug: it would commit without the lock).
        """
        if self.fence is not None:
            return db.fenced(self.fence)
        if db.shares_workers(self.engine):
            raise RuntimeError("a change of the round outside the round lock (Coordinator._exclusive)")
        return db.transaction(self.engine)

    def exclusive_round(self) -> AbstractContextManager[None]:
        """[T1] ``_exclusive`` for server.secure: a secure round's messages change it one at a time."""
        return self._exclusive()

    def _sync(self, conn: db.Connection) -> None:
        """Catch up with the database: another worker may have drawn the cohort, closed the round
        or published a version since this one last looked.
        """
        current = db.current_round(conn)
        if current == self.round:
            return
        if current.base_version != self.version:
            self.parents = db.version_parents(conn)
            self._load(current.base_version)
        self.round = current

    def _load(self, version: int) -> None:
        """Make version current: manifest, weights and optimizer state."""
        self.version = version
        self.manifest = self.store.manifest(version)
        self.weights = self.store.weights(version)
        self.optimizer = self._optimizer_with(self.store.optimizer_state(version))

    def _optimizer_with(self, state: dict) -> ServerOptimizer:
        """A fresh optimizer holding state (a state of another optimizer kind is dropped)."""
        optimizer = self.new_optimizer()
        if {key.split("/", 1)[0] for key in state} == set(optimizer.slots):
            optimizer.state = dict(state)
        elif state:
            logs.event("optimizer_state_reset", optimizer=optimizer.name, saved_slots=sorted(state)[:4])
        return optimizer

    def _gather(self) -> tuple[Aggregator, list[db.StoredUpdate]]:
        """A fresh strategy fed every stored delta of the open round, each checked again (a damaged
        body is quarantined, bodies without a row are deleted); only under the round lock.
        """
        with db.transaction(self.engine) as conn:
            carried = db.current_round(conn).carried
        aggregator = self.new_aggregator()
        aggregator.start({p["name"]: tuple(p["shape"]) for p in self.manifest["parameters"]}, carried)
        limit = self.rules.min_clients if self.rules.buffered else None  # one FedBuff buffer
        self.round, accepted = recovery.replay(self.writing, self.spool, aggregator,
                                               self.manifest["parameters"], self.rules.max_update_norm,
                                               self.clock(), limit)
        return aggregator, accepted

    def _resume(self) -> None:
        """Take up the open round (as the database has it) and close it if it is already due."""
        with db.transaction(self.engine) as conn:
            self._sync(conn)
            count = db.count_updates(conn, self.round.id)
            if self.secure is not None:  # [T1] rebuild a secure round from its stored messages
                self.secure.resume(conn, self.round)
        logs.event("round_open", version=self.version, round=self.round.id, updates=count)
        self._maybe_close(self.clock(), count)

    def admit(self) -> None:
        """:raise Refused: if the open round takes no training (e.g. a spent privacy budget)."""
        with self.lock, db.transaction(self.engine) as conn:
            self._sync(conn)
            self._opened_strategy().admit()

    def _opened_strategy(self) -> Aggregator:
        """The strategy started on the open round's carried state: it says whether the round may
        train (``admit``: a spent privacy budget) and what the books say now, whichever worker
        closed the last round.
        """
        if self.opened is None or self.opened[0] != self.round.id:
            aggregator = self.new_aggregator()
            aggregator.start({p["name"]: tuple(p["shape"]) for p in self.manifest["parameters"]},
                             self.round.carried)
            self.opened = (self.round.id, aggregator)
        return self.opened[1]

    def current(self) -> tuple[int, int, dict]:
        """(version, open round id, manifest) read together, as the database has them now."""
        with self.lock, db.transaction(self.engine) as conn:
            self._sync(conn)
            return self.version, self.round.id, self.manifest

    def parameters(self) -> list[dict]:
        """The model's parameter names and shapes: the same in every version of a federation
        (start-up refuses other graphs), so no need to read the database.
        """
        return self.manifest["parameters"]

    def progress(self) -> Progress:
        """The live part of /api/status: the open round and its count over every worker."""
        with self.lock, db.transaction(self.engine) as conn:
            self._sync(conn)
            return Progress(self.version, self.optimizer.name, self.aggregator.name, self.round,
                            db.count_updates(conn, self.round.id), self.rules,
                            {**self.aggregator.report(), **self._opened_strategy().report()})

    def _first_phase(self) -> str:
        """The phase a new round opens in."""
        return PHASE_SELECTING if self.rules.cohort is not None else PHASE_REPORTING

    # -- check-ins and cohorts ---------------------------------------------------------------------

    def check_in(self, client_id: str, network: str) -> dict:
        """Ask to take part. While the cohort is being chosen the check-in is recorded (once);
        afterwards the answer says whether client_id is in the reporting round's cohort.

        :return: round, version, phase, state (open | waiting | selected | not_selected),
            retry_after_s (when to ask again), deadline; while waiting also checked_in (eligible
            check-ins so far) and needed (how many draw the cohort), so a page can show it forming.
        """
        with self.lock:
            now, rules = self.clock(), self.rules.cohort
            with db.transaction(self.engine) as conn:
                self._sync(conn)
                self._opened_strategy().admit()
                if rules is not None and self.round.phase == PHASE_SELECTING:
                    db.check_in(conn, self.round.id, client_id, network, now)
            answer = {"round": self.round.id, "version": self.version, "phase": self.round.phase}
            if rules is None:
                return {**answer, "state": "open", "retry_after_s": 0.0, "deadline": self.round.deadline}
            if self.round.phase == PHASE_SELECTING:
                self._maybe_select(now)
            answer = {"round": self.round.id, "version": self.version, "phase": self.round.phase}
            if self.round.phase == PHASE_SELECTING:
                wait = max(rules.poll_s, self.round.opened_at + rules.window_s - now)
                with db.transaction(self.engine) as conn:
                    networks = db.checkins_by_network(conn, self.round.id)
                return {**answer, "state": "waiting", "retry_after_s": wait, "deadline": None,
                        "checked_in": cohorts.eligible(networks, rules.per_network),
                        "needed": max(rules.goal, rules.min_eligible)}
            with db.transaction(self.engine) as conn:
                member = db.is_member(conn, self.round.id, client_id)
            wait = rules.poll_s if member else min(max(rules.poll_s, self.round.deadline - now), 60.0)
            return {**answer, "state": "selected" if member else "not_selected", "retry_after_s": wait,
                    "deadline": self.round.deadline}

    def _maybe_select(self, now: float) -> None:
        """Draw the open round's cohort once its window passed and enough eligible clients checked in."""
        if self.rules.cohort is None or self.round.phase != PHASE_SELECTING or not self._ready(now):
            return
        with self._exclusive():  # one worker draws, once
            if self.round.phase == PHASE_SELECTING and self._ready(now):
                self._select(now)

    def _ready(self, now: float) -> bool:
        """Whether the selecting round's window passed with enough eligible check-ins."""
        assert self.rules.cohort is not None
        with db.transaction(self.engine) as conn:
            networks = db.checkins_by_network(conn, self.round.id)
        return cohorts.ready(self.rules.cohort, self.round.opened_at, now, networks)

    def _select(self, now: float) -> None:
        """Draw the cohort among the round's check-ins and start reporting."""
        rules = self.rules.cohort
        assert rules is not None
        try:
            with self.writing() as conn:
                networks = db.checkins_by_network(conn, self.round.id)
                members = cohorts.sample(db.round_checkins(conn, self.round.id), rules.target,
                                         rules.per_network, self.rng)
                phase, deadline = PHASE_REPORTING, now + self.rules.deadline_s
                if self.secure is not None:  # [T1] the cohort runs the secure phases instead of reporting
                    size = sum(math.prod(p["shape"]) for p in self.manifest["parameters"])
                    phase, deadline = self.secure.start(conn, self.round.id, members, size, now)
                db.start_reporting(conn, self.round.id, members, now, deadline, phase)
        except Exception:
            if self.secure is not None:  # [T1] the draw was not stored: neither is the round start() built
                self.secure.forget()
            raise
        self.round = replace(self.round, phase=phase, selected_at=now, deadline=deadline)
        logs.event("cohort_selected", round=self.round.id, members=len(members),
                   checkins=sum(networks.values()), networks=len(networks))

    # -- tickets and updates -----------------------------------------------------------------------

    def issue_ticket(self, client_id: str, base_version: int | None = None) -> dict:
        """A single-use ticket for the current round and the current version, or for base_version,
        an older one an update was trained on, as long as that update would still be accepted (an
        update that waited offline, or behind a full network, past its first ticket's expiry):
        ticket, version, round, expires_at.

        :raise UnknownBaseVersion, StaleVersion: base_version is no version, or too old.
        """
        ticket = secrets.token_urlsafe(24)
        with self.lock:
            now = self.clock()
            expires = now + self.rules.ticket_ttl_s
            with db.transaction(self.engine) as conn:
                self._sync(conn)
                self._opened_strategy().admit()
                if self.rules.cohort is not None and not (self.round.phase != PHASE_SELECTING and
                                                          db.is_member(conn, self.round.id, client_id)):
                    raise NotSelected(f"client {client_id} is not in the cohort of round {self.round.id}; "
                                      "check in (POST /api/checkins) and wait to be selected")
                version = self.version if base_version is None else base_version
                if version != self.version and self.secure is not None:
                    raise StaleVersion("a secure round takes masked inputs trained on its own version "
                                       f"{self.version} only")
                self._staleness(version)
                db.insert_ticket(conn, db.ticket_digest(ticket), client_id, version, self.round.id, now,
                                 expires)
            return {"ticket": ticket, "version": version, "round": self.round.id, "expires_at": expires}

    def _plain_only(self) -> None:
        """:raise SecureOnly: [T1] an update in clear is exactly what secure mode never stores."""
        if self.secure is not None:
            raise SecureOnly("this server aggregates securely: a cohort member sends a masked input "
                             "(docs/PROTOCOL.md, Secure rounds), never its update")

    def vet_ticket(self, meta: UpdateMeta, network: str = "") -> None:
        """Refuse an upload whose ticket cannot be claimed (unknown, used, another client's,
        expired) before its body is decoded or staged: one indexed read, no lock, so a flood of
        made-up tickets costs no disk writes. ``_claim_ticket`` still claims it in the update's
        transaction (another upload may use it meanwhile). In a FedBuff buffer, a network with no
        free seat is refused here too (two more reads): a refused ticket stays unused, so without
        this its body could be sent again and again, each time decoded, written and fsynced.

        :raise Refused: SecureOnly, TicketInvalid, TicketReused, TicketMismatch, TicketExpired,
            NetworkFull, DuplicateClient.
        """
        self._plain_only()
        key = db.ticket_digest(meta.ticket)
        with db.reading(self.engine) as conn:
            ticket = db.find_ticket(conn, key)
            if ticket is None or ticket.used_at is not None:
                self._refuse_unusable(conn, key, meta, ticket)
            self._check_ticket(ticket, meta, self.clock())
            if self.rules.buffered:  # _store takes the seat; it may be gone by then
                self._seat(conn, db.current_round(conn).id, network, meta)

    def submit(self, meta: UpdateMeta, norm: float, body, source: int | None = None,
               network: str = "") -> dict:
        """Persist one validated update (body: its checked upload, bytes or an mmap of source, an
        open descriptor of the front's file of it; network: the /24 or /56 it came from) and close
        the round if it is due.

        :return: accepted, round, updates_in_round, and the version after this update.
        :raise Refused: UnknownBaseVersion, StaleVersion, Ticket*, VersionMismatch, DuplicateClient,
            NetworkFull.
        """
        self._plain_only()
        sha256 = hashlib.sha256(body).hexdigest()  # the close checks the stored body against it
        # written (or linked) and fsynced before any lock: most of an upload's time
        staged = self.spool.stage(body) if source is None else self.spool.stage_file(source, body)
        try:
            with self.lock:
                now = self.clock()
                round_id, staleness, count = self._store(meta, norm, sha256, staged, now, network)
                if count is None:  # several workers: count what all of them committed by now
                    count = self._count(round_id)
                logs.event("update_accepted", round=round_id, client=meta.client_id, staleness=staleness,
                           examples=meta.num_examples, norm=round(norm, 6), updates_in_round=count)
                try:
                    self._maybe_close(now, count)
                except Exception:  # stored and counted: the answer is 202 whatever the close met; the
                    # next tick or upload closes the round (a 5xx would say "not stored")
                    logs.event("close_failed", level=logging.ERROR, exc_info=True, round=round_id)
                return {"accepted": True, "round": round_id, "updates_in_round": count,
                        "version": self.version}
        except SPENDS_TICKET:
            self._spend_ticket(meta)
            raise
        finally:
            staged.unlink(missing_ok=True)  # a refused upload's body; gone already once placed

    def _spend_ticket(self, meta: UpdateMeta) -> None:
        """Mark the ticket of an upload refused for its own content used: it could never be
        accepted as it is, and each try costs a staged, fsynced body; once spent, ``vet_ticket``
        refuses it before the body is touched. (A refusal rolls back the claim of ``_store``.)
        """
        with db.transaction(self.engine) as conn:
            db.use_ticket(conn, db.ticket_digest(meta.ticket), self.clock())

    def _count(self, round_id: int) -> int:
        """The updates of round_id that every worker has committed."""
        with db.reading(self.engine) as conn:
            return db.count_updates(conn, round_id)

    def _store(self, meta: UpdateMeta, norm: float, sha256: str, staged: Path, now: float, network: str
               ) -> tuple[int, int, int | None]:
        """Record one update in the open round and place its staged body, in one transaction (a
        refusal rolls it back: the ticket stays unused, the body unplaced).

        A FedBuff upload that loses a race for a seat to a concurrent commit tries again: the
        winner's row is then visible, so it takes another free seat, or is refused NetworkFull
        once all are taken (each lost race is one more seat taken: per_network tries at most).

        :return: the round, the update's staleness, and the round's update count with it (None
            where several workers share the database: a count inside the transaction misses the
            others' uncommitted rows, so the caller counts after the commit).
        """
        for _ in range(self.rules.per_network if self.rules.buffered else 1):
            try:
                return self._store_once(meta, norm, sha256, staged, now, network)
            except _Collided as collided:
                with db.transaction(self.engine) as conn:  # the loser is rolled back: read what won
                    if collided.seat is None or db.has_update(conn, collided.round_id, meta.client_id):
                        self._refuse_duplicate(meta, collided.round_id)
        raise self._network_full(network)

    def _store_once(self, meta: UpdateMeta, norm: float, sha256: str, staged: Path, now: float, network: str
                    ) -> tuple[int, int, int | None]:
        """One try of ``_store``.

        :raise _Collided: a concurrent commit took the client's or the seat's unique key first.
        """
        with db.transaction(self.engine) as conn:
            db.share_round(conn)  # until the commit: no worker closes this round meanwhile
            self._sync(conn)
            self._opened_strategy().admit()
            round_id = self.round.id
            staleness = self._staleness(meta.base_version)
            weight = meta.num_examples * staleness_weight(staleness, self.rules.staleness_exponent)
            key = self._claim_ticket(conn, meta, now)
            seat = self._seat(conn, round_id, network, meta) if self.rules.buffered else None
            if not db.insert_update(conn, round_id=round_id, client_id=meta.client_id, ticket_digest=key,
                                    base_version=meta.base_version, staleness=staleness,
                                    num_examples=meta.num_examples, weight=weight,
                                    loss_before=meta.loss_before, loss_after=meta.loss_after, norm=norm,
                                    received_at=now, sha256=sha256, network=network, seat=seat):
                raise _Collided(round_id, seat)  # the unique (round, client) key, or the seat's
            # one process counts inside its lock, so the counts are a sequence: exactly one upload
            # sees min_clients
            count = None if db.shares_workers(self.engine) else db.count_updates(conn, round_id)
            self.spool.place(staged, round_id, key)  # before the commit: a committed row has its body
        return round_id, staleness, count

    @staticmethod
    def _refuse_duplicate(meta: UpdateMeta, round_id: int) -> NoReturn:
        """:raise DuplicateClient: always (the unique (round, client) key)."""
        raise DuplicateClient(f"client {meta.client_id} already sent an update in round {round_id}")

    def _seat(self, conn: db.Connection, round_id: int, network: str, meta: UpdateMeta) -> int:
        """The lowest free seat of network in the open FedBuff buffer: the unique (round, network,
        seat) key then makes two uploads racing for the same seat on two workers collide, so a
        buffer never holds more than per_network updates of one network.

        :raise DuplicateClient, NetworkFull: all per_network seats are taken (one by this client).
        """
        free = set(range(self.rules.per_network)) - db.seats_taken(conn, round_id, network)
        if not free:
            if db.has_update(conn, round_id, meta.client_id):
                self._refuse_duplicate(meta, round_id)
            raise self._network_full(network)
        return min(free)

    def _network_full(self, network: str) -> NetworkFull:
        """The refusal of an upload whose network holds all its seats in the open buffer."""
        return NetworkFull(f"the open buffer already holds {self.rules.per_network} update(s) from your "
                           f"network ({network}), the most it takes from one; nothing was stored and the "
                           "ticket is still unused: keep the update and send it again once this buffer has "
                           "stepped (a new version in GET /api/model)")

    def _staleness(self, base_version: int) -> int:
        """How many versions the current one is past base_version along its ancestry."""
        if base_version not in self.parents:
            raise UnknownBaseVersion(f"base_version {base_version} is not a version of this server")
        version: int | None = self.version
        steps = 0
        while version != base_version:
            version, steps = self.parents[version], steps + 1  # type: ignore[index]  # None ends the loop
            if version is None or steps > self.rules.max_staleness:
                raise StaleVersion(f"base_version {base_version} is too old or was rolled back; "
                                   f"fetch version {self.version} and train again")
        return steps

    def _claim_ticket(self, conn: db.Connection, meta: UpdateMeta, now: float) -> str:
        """Mark the update's ticket used, checking it is this client's, unused and unexpired (a
        refusal rolls the mark back with the transaction).
        """
        key = db.ticket_digest(meta.ticket)
        ticket = db.use_ticket(conn, key, now)
        if ticket is None:  # the rare paths (used by another upload since vet_ticket): say why
            self._refuse_unusable(conn, key, meta, db.find_ticket(conn, key))
        self._check_ticket(ticket, meta, now)
        if self.rules.cohort is not None and ticket.round_id != self.round.id:
            raise RoundClosed(f"the ticket is for round {ticket.round_id}, which has ended; check in again")
        if ticket.version != meta.base_version:
            raise VersionMismatch(f"ticket is for version {ticket.version}, base_version says "
                                  f"{meta.base_version}: take the ticket with the model you train on")
        return key

    @staticmethod
    def _refuse_unusable(conn: db.Connection, key: str, meta: UpdateMeta,
                         found: db.Ticket | None) -> NoReturn:
        """Say why the ticket with digest key (found: its row, None if unknown or pruned) cannot be used.

        :raise TicketMismatch, TicketReused, TicketSpent, TicketInvalid: always.
        """
        if found is not None and found.client_id != meta.client_id:
            raise TicketMismatch("this ticket was issued to another client_id")
        if found is not None and not db.ticket_was_used(conn, key):
            raise TicketSpent("this ticket was spent by an upload refused for its version, round or "
                              "client: take a new one")
        if found is not None:
            raise TicketReused("this ticket was already used (if your first upload got no answer, "
                               "it was counted)")
        if db.ticket_was_used(conn, key):  # used, then pruned after it expired
            raise TicketReused("this ticket was already used")
        raise TicketInvalid("unknown ticket; get one from POST /api/tickets")

    @staticmethod
    def _check_ticket(ticket: db.Ticket, meta: UpdateMeta, now: float) -> None:
        """Check an unused ticket against the upload: this client's and unexpired.

        :raise TicketMismatch, TicketExpired:
        """
        if ticket.client_id != meta.client_id:
            raise TicketMismatch("this ticket was issued to another client_id")
        if ticket.expires_at <= now:
            raise TicketExpired(f"ticket expired at {iso(ticket.expires_at)}")

    def prune_tickets(self) -> int:
        """Delete tickets expired for longer than a TTL (until then they still read expired)."""
        with db.transaction(self.engine) as conn:
            return db.prune_tickets(conn, self.clock() - self.rules.ticket_ttl_s)

    # -- closing, rollback -------------------------------------------------------------------------

    def tick(self) -> None:
        """Draw a cohort that is due; close (or abandon) the round if its deadline passed."""
        with self.lock:
            with db.transaction(self.engine) as conn:
                self._sync(conn)
            self._maybe_select(self.clock())
            self._maybe_close(self.clock())

    def _due(self, now: float, count: int) -> str | None:
        """Why the open round ends now with count updates: min_clients, deadline (close), abandon
        (a cohort short of the floor at the deadline), or None (not yet).
        """
        if self.round.phase == PHASE_SELECTING:
            return None
        if self.rules.buffered:  # FedBuff: a step every K updates, however long they take
            return "buffer_full" if count >= self.rules.min_clients else None
        if count >= self.rules.min_clients:
            return "min_clients"
        if now >= self.round.deadline and count >= self.rules.floor:
            return "deadline"
        if now >= self.round.deadline and self.rules.cohort is not None:
            return "abandon"
        return None

    def _maybe_close(self, now: float, count: int | None = None) -> None:
        """Close when min_clients arrived, or past the deadline with at least the floor.

        count is the round's updates as the caller saw them after its commit (None: counted here;
        on several workers a count inside the transaction could miss a concurrent upload's row, so
        two uploads committing at once would each count one short of the goal). When due, the
        round lock is taken and the stored deltas decide again: another worker may have closed the
        round meanwhile, and a damaged body does not count. A failed close (disk full...) is
        logged and leaves the round open with every update it had; the next update or tick tries
        again. The update that triggered it stays accepted.
        """
        if self.secure is not None:  # [T1] a secure round closes its phases itself (server/secure.py)
            if self.round.phase != PHASE_SELECTING:
                self.secure.advance(self, now)
            return
        if count is None:
            count = self._count(self.round.id)
        if self._due(now, count) is None:
            return
        with self._exclusive():
            aggregator, accepted = self._gather()
            reason = self._due(now, aggregator.count)
            if reason == "abandon":
                detail = (f"{aggregator.count} of {self.rules.floor} reports needed by the deadline arrived; "
                          "a new cohort is drawn")
                self._restart_round("abandoned", "deadline", detail, now, self.round.carried)
            elif reason is not None:
                try:
                    self._close(reason, now, aggregator, accepted)
                except Exception:
                    logs.event("close_failed", level=logging.ERROR, exc_info=True, round=self.round.id)

    def close_now(self) -> dict:
        """Close the open round with whatever it has (admin).

        :raise EmptyRound: if no update arrived yet.
        """
        with self._exclusive():
            aggregator, accepted = self._gather()
            if aggregator.count == 0:
                raise EmptyRound(f"round {self.round.id} has no updates to aggregate")
            return self._close("admin", self.clock(), aggregator, accepted)

    def close_secure(self, now: float) -> None:
        """[T1] Close a secure round whose sum was unmasked (a failure is logged; the next tick retries)."""
        try:
            self._close("secure", now, self._opened_strategy(), [])
        except Exception:
            logs.event("close_failed", level=logging.ERROR, exc_info=True, round=self.round.id)

    def abandon_round(self, reason: str, detail: str, now: float) -> None:
        """[T1] End the open round without a version (a secure cohort fell below its minimum)."""
        self._restart_round("abandoned", reason, detail, now, self.round.carried)

    def _close(self, reason: str, now: float, aggregator: Aggregator,
               accepted: list[db.StoredUpdate]) -> dict:
        """Aggregate the round (every stored delta fed to aggregator, or a secure cohort's unmasked
        sum) into the next version and open the next round; under the round lock.
        """
        mean_delta: dict | None
        waiting = [update.key for update in accepted[self.rules.min_clients:]] if self.rules.buffered else []
        accepted = accepted[:len(accepted) - len(waiting)]  # what gather fed the strategy
        if self.secure is not None:  # [T1] the unmasked mean of the secure cohort
            mean_delta = self.secure.mean_delta(self.manifest["parameters"])
            aggregator.aggregated_elsewhere()  # the privacy ledger counts it all the same
        else:
            deltas = self.spool.deltas(self.round.id, [update.key for update in accepted])
            mean_delta = aggregator.finalize(deltas)
        assert mean_delta is not None, "closing a round without updates"
        optimizer = self._optimizer_with(self.optimizer.state)
        weights = optimizer.step(self.weights, mean_delta)
        carried = aggregator.carry()
        self.aggregator = aggregator  # /api/status reports the round this worker closed last
        problem = unsafe_weights(weights, self.rules.max_weight_abs)
        if problem:
            raise UnsafeWeights(f"refusing to publish version {self.version + 1}: {problem}")
        if self.gate is not None:
            verdict = self.gate(self.version, weights)
            if not verdict.ok:
                logs.event("gate_refused", level=logging.WARNING, round=self.round.id, detail=verdict.detail,
                           **(verdict.scores or {}))
                return self._restart_round("refused", "gate", verdict.detail, now, carried, waiting)
        with db.transaction(self.engine) as conn:
            folded = [update.key for update in accepted] if waiting else None
            stats = self.aggregator.publishable(
                db.round_stats(conn, [self.round.id], folded).get(self.round.id, {}))
        extra = {"round": self.round.id, "reason": reason, "optimizer": optimizer.name,
                 "aggregator": self.aggregator.name, **stats, **self.aggregator.report(),
                 **(self.secure.report() if self.secure is not None else {})}
        return self._publish(self.manifest, weights, optimizer.state, extra, "aggregate", reason, now,
                             carried, waiting)

    def _restart_round(self, status: str, reason: str, detail: str, now: float, carried: dict | None,
                       waiting: list[str] | None = None) -> dict:
        """End the open round without a new version (refused by the gate, or abandoned) and open a
        new one on the same version; its updates stay recorded with the ended round, but for a
        FedBuff buffer's latecomers (waiting), which move to the new one.
        """
        ended = self.round.id
        with self.writing() as conn:
            db.end_round(conn, ended, status, now, reason, None, detail)
            opened = db.open_round(conn, self.version, now, now + self.rules.deadline_s, self._first_phase(),
                                   carried)
            self._carry(conn, ended, waiting or [])
        self.spool.drop_round(ended)
        self._take_up()
        logs.event(f"round_{status}", ended_round=ended, round=opened, detail=detail)
        return {"version": self.version, "ended_round": ended, "round": opened, "reason": status,
                "detail": detail}

    def _take_up(self) -> None:
        """``_resume`` after a commit that ended the round: that is done, so a database that fails
        now (a PostgreSQL restart that cut the lock's connection too) is logged, not answered 503,
        which says "not done" (an admin's retry would close the next round, or roll back again);
        the next request reads the new round.
        """
        try:
            self._resume()
        except db.DatabaseUnavailable as exc:
            logs.event("resume_failed", level=logging.WARNING, error=str(exc))

    def rollback(self, version: int) -> dict:
        """Publish a copy of an earlier version (weights and optimizer state) as the next version.

        The open round is aborted: its deltas were computed on the model being rolled back.
        :raise NoSuchVersion, NotEarlier, VersionDamaged: for an unknown, the current or a damaged version.
        """
        with self._exclusive():
            if version not in self.parents:
                raise NoSuchVersion(f"there is no version {version}")
            if version == self.version:
                raise NotEarlier(f"version {version} is already current")
            try:  # every file is checked against its sha256
                parent, weights = self.store.manifest(version), self.store.weights(version)
                state = self.store.optimizer_state(version)
            except (OSError, ValueError) as exc:
                logs.event("version_damaged", level=logging.ERROR, version=version, error=str(exc))
                raise VersionDamaged(f"version {version} is damaged on disk ({exc})") from None
            # the strategy's account so far: a rollback never takes back spent privacy (server.dp)
            extra = {"rollback_to": version, "rolled_back": self.version, **self._opened_strategy().report()}
            return self._publish(parent, weights, state, extra, "rollback", "rollback", self.clock(),
                                 self.round.carried)

    def _publish(self, parent: dict, weights: dict, state: dict, extra: dict, kind: str, reason: str,
                 now: float, carried: dict | None = None, waiting: list[str] | None = None) -> dict:
        """Write the next version (graphs from parent), record it, end the open round (closed, or
        aborted by a rollback), open the next round with a FedBuff buffer's latecomers (waiting),
        and switch to it.
        """
        problem = unsafe_weights(weights, self.rules.max_weight_abs)
        if problem:
            raise UnsafeWeights(f"refusing to publish version {self.version + 1}: {problem}")
        self._clear_way(self.version + 1)
        manifest = self.store.write(parent, self.version + 1, weights, state, extra, now)
        version, ended = manifest["model_version"], self.round.id
        status = "closed" if kind == "aggregate" else "aborted"
        entry = manifest["files"][WEIGHTS]
        with self.writing() as conn:
            db.end_round(conn, ended, status, now, reason, version)  # first: fails if no longer open
            db.record_version(conn, version, manifest["parent_version"], kind,
                              ended if kind == "aggregate" else None, now,
                              [(entry["sha256"], WEIGHTS, self.store.relative(version, WEIGHTS))])
            opened = db.open_round(conn, version, now, now + self.rules.deadline_s, self._first_phase(),
                                   carried)
            self._carry(conn, ended, waiting or [])
        self.parents[version] = manifest["parent_version"]
        self.spool.drop_round(ended)
        self._take_up()
        logs.event("version_published", version=version, kind=kind, ended_round=ended, status=status,
                   reason=reason, parent=manifest["parent_version"])
        return {"version": version, "ended_round": ended, "round": opened, "reason": reason}

    def _carry(self, conn: db.Connection, ended: int, waiting: list[str]) -> None:
        """Move a buffer's latecomers into the round conn just opened: their bodies are linked into
        its spool directory before the rows move, so either commit outcome finds every body.
        """
        if waiting:
            opened = db.current_round(conn).id
            db.move_updates(conn, waiting, opened)
            self.spool.carry(ended, opened, waiting)
            logs.event("buffer_carried", ended_round=ended, round=opened, updates=len(waiting))

    def _clear_way(self, version: int) -> None:
        """Move aside what a failed earlier publish left at version's directory (never deleted).

        First, on the round lock's connection, check that no worker recorded that version: one that
        lost the lock unnoticed (its connection dropped while it aggregated) then fails here
        instead of moving aside the directory another worker published meanwhile.

        :raise RoundLockLost: version is recorded (or the lock's connection dropped).
        """
        with self.writing() as conn:
            if db.version_recorded(conn, version):
                raise db.RoundLockLost(f"version {version} was published by another worker meanwhile; "
                                       "nothing was committed")
            self.store.remove_temps()
            if self.store.path(version).exists():
                moved = quarantine.move_aside(self.store.data_dir, self.store.path(version), "versions")
                db.quarantine_version(conn, version, "left by a failed publish", moved, self.clock())
                logs.event("version_quarantined", level=logging.WARNING, version=version, moved_to=moved)
