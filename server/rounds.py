"""The round coordinator: tickets, accepted updates, the running sum, closing rounds, rollback.

One ``Coordinator`` per server process owns the open round. An update is committed (its row and
its used ticket in the database, its delta bytes fsynced to the spool, ``server.spool``) *before*
it is folded into the in-memory running sum and before the client hears 202; a restart replays
the open round's stored deltas, so the sum is a cache of what is on disk, never the only copy. Closing writes the next version directory
atomically (``server.versions``), then records it, closes the round and opens the next in one
transaction. A crash between the two leaves an unknown directory that start-up sweeps away and a
still-open round that closes again with the same updates. Writers hold one lock: the server is
one process with many threads (``fedurl-serve``).

Staleness (docs/PROTOCOL.md): a delta computed on version b is accepted while the current version
descends from b by at most MAX_STALENESS steps, with weight num_examples * (1 + s)^-exponent
(Xie et al. 2019); after a rollback the abandoned branch is no ancestor, so its deltas are refused.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from formats.bundle import load_bundle
from server import db, logs
from server.aggregate import FedAvg, WeightedSum, staleness_weight
from server.errors import ApiError
from server.spool import Spool
from server.status import round_stats
from server.validation import UpdateMeta, as_float32, decode_payload
from server.versions import WEIGHTS, VersionStore, iso


@dataclass(frozen=True)
class RoundRules:
    """When rounds close and which updates count."""

    min_clients: int
    floor: int
    deadline_s: float
    ticket_ttl_s: float
    max_staleness: int
    staleness_exponent: float


def digest(ticket: str) -> str:
    """The stored form of a ticket."""
    return hashlib.sha256(ticket.encode()).hexdigest()


class Coordinator:
    """Serves the current version and turns accepted updates into the next one."""

    def __init__(self, engine: sa.Engine, store: VersionStore, rules: RoundRules, new_optimizer,
                 clock=time.time):
        """:param new_optimizer: zero-argument factory of a fresh server optimizer."""
        self.engine, self.store, self.rules = engine, store, rules
        self.new_optimizer, self.clock = new_optimizer, clock
        self.spool = Spool(store.data_dir)
        self.lock = threading.RLock()

    # -- start-up ----------------------------------------------------------------------------------

    def start(self, bundle_dir: str | None) -> None:
        """Import the first version if the database has none, sweep debris, resume the open round."""
        with self.lock:
            with db.transaction(self.engine) as conn:
                self.parents = dict(conn.execute(sa.select(db.versions.c.version, db.versions.c.parent)).all())
            removed = self.store.sweep(set(self.parents))
            if removed:
                logs.event("swept_debris", entries=removed)
            if not self.parents:
                self._import(bundle_dir)
            self._load(max(self.parents))
            self._check_same_graphs(bundle_dir)
            self._resume()

    def _import(self, bundle_dir: str | None) -> None:
        """Copy the initial bundle in and open the first round."""
        if bundle_dir is None:
            raise RuntimeError("no global model yet: start with --bundle DIR (or BUNDLE_DIR)")
        manifest = self.store.import_bundle(bundle_dir)
        version, now = int(manifest["model_version"]), self.clock()
        with db.transaction(self.engine) as conn:
            self._record_version(conn, manifest, "initial", None, list(manifest["files"]), now)
            self._open_round(conn, version, now)
        self.parents = {version: None}
        logs.event("imported_bundle", source=str(bundle_dir), version=version)

    def _check_same_graphs(self, bundle_dir: str | None) -> None:
        """Refuse to serve a data dir that was started from a different model's graphs."""
        if bundle_dir is None:
            return
        wanted = load_bundle(bundle_dir, verify=False).manifest["files"]
        for name in ("infer.onnx", "train_step.onnx", "tokenizer.json"):
            if wanted[name]["sha256"] != self.manifest["files"][name]["sha256"]:
                raise RuntimeError(f"{self.store.data_dir} holds a model with a different {name} than "
                                   f"{bundle_dir}; use another data dir for a new model")

    def _load(self, version: int) -> None:
        """Make version current: manifest, weights, optimizer state, and its /api/model document."""
        self.version = version
        self.manifest = self.store.manifest(version)
        self.weights = self.store.weights(version)
        self.optimizer = self._optimizer_with(self.store.optimizer_state(version))
        self.model_document = {
            "version": version, "manifest": self.manifest,
            "files": {name: f"/api/files/{entry['sha256']}" for name, entry in self.manifest["files"].items()}}

    def _optimizer_with(self, state: dict) -> FedAvg:
        """A fresh optimizer holding state (a state of another optimizer kind is dropped)."""
        optimizer = self.new_optimizer()
        if {key.split("/", 1)[0] for key in state} == set(optimizer.slots):
            optimizer.state = dict(state)
        elif state:
            logs.event("optimizer_state_reset", optimizer=optimizer.name, saved_slots=sorted(state)[:4])
        return optimizer

    def _resume(self) -> None:
        """Rebuild the running sum from the open round's stored deltas; drop every other body."""
        with db.transaction(self.engine) as conn:
            row = conn.execute(sa.select(db.rounds).where(db.rounds.c.status == "open")).one()
            self.round = row._asdict()
            self.sum = self._empty_sum()
            stored = conn.execute(sa.select(db.updates.c.weight, db.updates.c.ticket_digest)
                                  .where(db.updates.c.round_id == self.round["id"]).order_by(db.updates.c.id)).all()
        for weight, key in stored:  # one body in memory at a time
            tensors, _ = decode_payload(self.spool.read(self.round["id"], key))
            self.sum.add({name: as_float32(array) for name, array in tensors.items()}, weight)
        removed = self.spool.sweep(self.round["id"], {key for _, key in stored})
        if removed:
            logs.event("swept_spool", entries=removed[:20], count=len(removed))
        logs.event("round_open", version=self.version, round=self.round["id"], updates=self.sum.count)
        self._maybe_close(self.clock())

    def _empty_sum(self) -> WeightedSum:
        """A running sum shaped like the model."""
        return WeightedSum({p["name"]: tuple(p["shape"]) for p in self.manifest["parameters"]})

    # -- what clients and the dashboard read ------------------------------------------------------

    def model_info(self) -> dict:
        """The /api/model document: current version, open round, manifest, file URLs."""
        with self.lock:
            return {**self.model_document, "round": self.round["id"]}

    def live(self) -> dict:
        """The in-memory part of /api/status: current version and the open round's progress."""
        with self.lock:
            return {"version": self.version, "optimizer": self.optimizer.name, "round": {
                "id": self.round["id"], "base_version": self.round["base_version"],
                "updates": self.sum.count, "opened_at": iso(self.round["opened_at"]),
                "deadline": iso(self.round["deadline"]), "min_clients": self.rules.min_clients,
                "min_clients_floor": self.rules.floor}}

    def find_file(self, sha256: str) -> tuple[Path, str] | None:
        """Path and bundle name of a content-addressed file, or None."""
        with db.transaction(self.engine) as conn:
            row = conn.execute(sa.select(db.files.c.path, db.files.c.name)
                               .where(db.files.c.sha256 == sha256)).first()
        return None if row is None else (self.store.data_dir / row.path, row.name)

    # -- tickets and updates -----------------------------------------------------------------------

    def issue_ticket(self, client_id: str) -> dict:
        """A single-use ticket for the current version and round."""
        ticket = secrets.token_urlsafe(24)
        with self.lock:
            now = self.clock()
            expires = now + self.rules.ticket_ttl_s
            with db.transaction(self.engine) as conn:
                conn.execute(db.tickets.insert().values(
                    digest=digest(ticket), client_id=client_id, version=self.version,
                    round_id=self.round["id"], issued_at=now, expires_at=expires))
            return {"ticket": ticket, "version": self.version, "round": self.round["id"],
                    "expires_at": iso(expires)}

    def submit(self, meta: UpdateMeta, delta: dict, norm: float, body: bytes) -> dict:
        """Persist one validated update, fold it into the sum, and close the round if it is due.

        :raise ApiError: unknown_version, stale_version, ticket_*, version_mismatch, duplicate_client.
        """
        with self.lock:
            now, round_id = self.clock(), self.round["id"]
            staleness = self._staleness(meta.base_version)
            weight = meta.num_examples * staleness_weight(staleness, self.rules.staleness_exponent)
            with db.transaction(self.engine) as conn:
                ticket_digest = self._claim_ticket(conn, meta, now)
                self._insert_update(conn, meta, ticket_digest, staleness, weight, norm, body, now)
            self.sum.add(delta, weight)
            count = self.sum.count
            logs.event("update_accepted", round=round_id, client=meta.client_id, staleness=staleness,
                       examples=meta.num_examples, norm=round(norm, 6), updates_in_round=count)
            self._maybe_close(now)
            return {"accepted": True, "round": round_id, "updates_in_round": count, "version": self.version}

    def _staleness(self, base_version: int) -> int:
        """How many versions the current one is past base_version along its ancestry."""
        if base_version not in self.parents:
            raise ApiError("unknown_version", f"base_version {base_version} is not a version of this server")
        version, steps = self.version, 0
        while version != base_version:
            version, steps = self.parents[version], steps + 1
            if version is None or steps > self.rules.max_staleness:
                raise ApiError("stale_version", f"base_version {base_version} is too old or was rolled "
                                                f"back; fetch version {self.version} and train again", 409)
        return steps

    def _claim_ticket(self, conn, meta: UpdateMeta, now: float) -> str:
        """Mark the update's ticket used, after checking it is this client's, unused and unexpired."""
        key = digest(meta.ticket)
        ticket = conn.execute(sa.select(db.tickets).where(db.tickets.c.digest == key)).first()
        if ticket is None:
            raise ApiError("ticket_invalid", "unknown ticket; get one from POST /api/tickets", 403)
        if ticket.client_id != meta.client_id:
            raise ApiError("ticket_mismatch", "this ticket was issued to another client_id", 403)
        if ticket.used_at is not None:
            raise ApiError("ticket_reused", "this ticket was already used (if your first upload got "
                                            "no answer, it was counted)", 409)
        if ticket.expires_at <= now:
            raise ApiError("ticket_expired", f"ticket expired at {iso(ticket.expires_at)}", 403)
        if ticket.version != meta.base_version:
            raise ApiError("version_mismatch", f"ticket is for version {ticket.version}, base_version says "
                                               f"{meta.base_version}: take the ticket with the model you "
                                               f"train on", 409)
        conn.execute(db.tickets.update().where(db.tickets.c.digest == key).values(used_at=now))
        return key

    def _insert_update(self, conn, meta, ticket_digest, staleness, weight, norm, body, now) -> None:
        """Insert the update's row and store its body before the commit; one update per client and round."""
        round_id = self.round["id"]
        taken = conn.execute(sa.select(db.updates.c.id).where(
            db.updates.c.round_id == round_id, db.updates.c.client_id == meta.client_id)).first()
        if taken is not None:
            raise ApiError("duplicate_client", f"client {meta.client_id} already sent an update in round "
                                               f"{round_id}", 409)
        conn.execute(db.updates.insert().values(
            round_id=round_id, client_id=meta.client_id, ticket_digest=ticket_digest,
            base_version=meta.base_version, staleness=staleness, num_examples=meta.num_examples,
            weight=weight, loss_before=meta.loss_before, loss_after=meta.loss_after, norm=norm,
            received_at=now))
        self.spool.write(round_id, ticket_digest, body)

    def count_rejection(self, code: str) -> None:
        """Count one refused request under its error code in the current round."""
        with self.lock, db.transaction(self.engine) as conn:
            key = (db.rejections.c.round_id == self.round["id"]) & (db.rejections.c.code == code)
            if conn.execute(db.rejections.update().where(key).values(total=db.rejections.c.total + 1)).rowcount == 0:
                conn.execute(db.rejections.insert().values(round_id=self.round["id"], code=code, total=1))

    # -- closing, rollback -------------------------------------------------------------------------

    def tick(self) -> None:
        """Close the round if its deadline passed with at least the floor of updates."""
        with self.lock:
            self._maybe_close(self.clock())

    def _maybe_close(self, now: float) -> None:
        """Close when min_clients arrived, or past the deadline with at least the floor.

        A failed close (disk full...) is logged and leaves the round open with every update it
        had; the next update or tick tries again. The update that triggered it stays accepted.
        """
        if self.sum.count >= self.rules.min_clients:
            reason = "min_clients"
        elif now >= self.round["deadline"] and self.sum.count >= self.rules.floor:
            reason = "deadline"
        else:
            return
        try:
            self._close(reason, now)
        except Exception:
            logs.event("close_failed", level=logging.ERROR, exc_info=True, round=self.round["id"])

    def close_now(self) -> dict:
        """Close the open round with whatever it has (admin).

        :raise ApiError: empty_round if no update arrived yet.
        """
        with self.lock:
            if self.sum.count == 0:
                raise ApiError("empty_round", f"round {self.round['id']} has no updates to aggregate", 409)
            return self._close("admin", self.clock())

    def _close(self, reason: str, now: float) -> dict:
        """Aggregate the round into the next version and open the next round."""
        optimizer = self._optimizer_with(self.optimizer.state)
        weights = optimizer.step(self.weights, self.sum.mean())
        with db.transaction(self.engine) as conn:
            stats = round_stats(conn, [self.round["id"]]).get(self.round["id"], {})
        extra = {"round": self.round["id"], "reason": reason, "optimizer": optimizer.name, **stats}
        return self._publish(self.manifest, weights, optimizer.state, extra, "aggregate", reason, now)

    def rollback(self, version: int) -> dict:
        """Publish a copy of an earlier version (weights and optimizer state) as the next version.

        The open round is aborted: its deltas were computed on the model being rolled back.
        :raise ApiError: unknown_version, or not_earlier for the current version.
        """
        with self.lock:
            if version not in self.parents:
                raise ApiError("unknown_version", f"there is no version {version}", 404)
            if version == self.version:
                raise ApiError("not_earlier", f"version {version} is already current", 409)
            now = self.clock()
            extra = {"rollback_to": version, "rolled_back": self.version}
            return self._publish(self.store.manifest(version), self.store.weights(version),
                                 self.store.optimizer_state(version), extra, "rollback", "rollback", now)

    def _publish(self, parent: dict, weights: dict, state: dict, extra: dict, kind: str, reason: str,
                 now: float) -> dict:
        """Write the next version (graphs from parent), record it, end the open round (closed, or
        aborted by a rollback), open the next round, and switch to it.
        """
        self.store.sweep(set(self.parents))  # a failed earlier attempt may have left its directory
        manifest = self.store.write(parent, self.version + 1, weights, state, extra, now)
        version, ended = manifest["model_version"], self.round["id"]
        status = "closed" if kind == "aggregate" else "aborted"
        with db.transaction(self.engine) as conn:
            self._record_version(conn, manifest, kind, ended if kind == "aggregate" else None, [WEIGHTS], now)
            conn.execute(db.rounds.update().where(db.rounds.c.id == ended).values(
                status=status, closed_at=now, close_reason=reason, result_version=version))
            self._open_round(conn, version, now)
        self.parents[version] = manifest["parent_version"]
        self._load(version)
        self._resume()
        logs.event("version_published", version=version, kind=kind, ended_round=ended, status=status,
                   reason=reason, parent=manifest["parent_version"])
        return {"version": version, "ended_round": ended, "round": self.round["id"], "reason": reason}

    def _record_version(self, conn, manifest: dict, kind: str, round_id, new_files: list, now: float) -> None:
        """Insert a version row and its new content-addressed files."""
        version = manifest["model_version"]
        conn.execute(db.versions.insert().values(
            version=version, parent=manifest.get("parent_version"), kind=kind, round_id=round_id, created=now))
        for name in new_files:
            sha = manifest["files"][name]["sha256"]
            if conn.execute(sa.select(db.files.c.sha256).where(db.files.c.sha256 == sha)).first() is None:
                conn.execute(db.files.insert().values(sha256=sha, name=name,
                                                      path=self.store.relative(version, name)))

    def _open_round(self, conn, version: int, now: float) -> None:
        """Insert the next open round on version."""
        conn.execute(db.rounds.insert().values(base_version=version, status="open", opened_at=now,
                                               deadline=now + self.rules.deadline_s))
