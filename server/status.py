"""Read-only views of the federation for /api/status, the dashboard and the admin routes."""

from __future__ import annotations

import sqlalchemy as sa

from server import db
from server.versions import iso

HISTORY = 200  # rounds and versions listed in a status document


def round_stats(conn, round_ids: list[int] | None = None) -> dict[int, dict]:
    """Per round: participants, examples, example-weighted mean loss before/after, mean staleness."""
    u = db.updates.c
    examples = sa.func.sum(u.num_examples)
    query = sa.select(u.round_id, sa.func.count(), examples,
                      sa.func.sum(u.loss_before * u.num_examples) / examples,
                      sa.func.sum(u.loss_after * u.num_examples) / examples,
                      sa.func.avg(u.staleness)).group_by(u.round_id)
    if round_ids is not None:
        query = query.where(u.round_id.in_(round_ids))
    return {rid: {"participants": n, "examples": int(ex), "loss_before": before, "loss_after": after,
                  "mean_staleness": float(stale)}
            for rid, n, ex, before, after, stale in conn.execute(query)}


def _rejections(conn, round_ids: list[int]) -> dict[int, dict[str, int]]:
    """Refused requests per round and code."""
    r = db.rejections.c
    counts: dict[int, dict[str, int]] = {}
    for rid, code, total in conn.execute(sa.select(r.round_id, r.code, r.total).where(r.round_id.in_(round_ids))):
        counts.setdefault(rid, {})[code] = total
    return counts


def _round_rows(conn) -> list[dict]:
    """The latest rounds, oldest first, each with its stats and rejections."""
    rows = [row._asdict() for row in conn.execute(
        sa.select(db.rounds).order_by(db.rounds.c.id.desc()).limit(HISTORY))][::-1]
    ids = [row["id"] for row in rows]
    stats, rejected = round_stats(conn, ids), _rejections(conn, ids)
    empty = {"participants": 0, "examples": 0, "loss_before": None, "loss_after": None, "mean_staleness": 0.0}
    for row in rows:
        row.update(stats.get(row["id"], empty), rejected=rejected.get(row["id"], {}))
        row["opened_at"], row["deadline"] = iso(row["opened_at"]), iso(row["deadline"])
        row["closed_at"] = iso(row["closed_at"]) if row["closed_at"] is not None else None
    return rows


def status_document(engine: sa.Engine, live: dict) -> dict:
    """The /api/status JSON: live round, totals, rejections by code, round and version history.

    :param live: the coordinator's in-memory view (version, round id, rules) merged in on top.
    """
    with db.transaction(engine) as conn:
        rounds = _round_rows(conn)
        versions = [{"version": v, "parent": p, "kind": k, "round": r, "created": iso(c)}
                    for v, p, k, r, c in conn.execute(sa.select(
                        db.versions.c.version, db.versions.c.parent, db.versions.c.kind,
                        db.versions.c.round_id, db.versions.c.created)
                        .order_by(db.versions.c.version.desc()).limit(HISTORY))][::-1]
        accepted = conn.execute(sa.select(sa.func.count()).select_from(db.updates)).scalar_one()
        by_code = dict(conn.execute(sa.select(db.rejections.c.code, sa.func.sum(db.rejections.c.total))
                                    .group_by(db.rejections.c.code)).all())
    return {**live, "accepted": accepted, "rejected": {k: int(v) for k, v in sorted(by_code.items())},
            "rounds": rounds, "versions": versions}
