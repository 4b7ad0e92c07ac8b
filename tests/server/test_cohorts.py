"""Server-chosen cohorts and identities that cost something ([T2]), with the default settings.

Before [T2] one address with made-up client ids took tickets for any round and closed 64 rounds
made only of its own ids in 76 s; here it pays a proof of work per id and lands at most
MAX_MEMBERS_PER_NETWORK (1) member of any cohort, and alone it never gets a cohort at all.
"""

from __future__ import annotations

import random
import time

import pytest

from client.protocol import FederatedClient, ProtocolError
from server import cohorts, db
from server.app import create_app
from server.identity import EnrollmentTokens
from tests.server.conftest import ADMIN_TOKEN, small_delta

ATTACK_S = 4.0  # real seconds the attacker invents ids before each round's honest check-ins
# ids minted per round at most, however fast the machine: 60 ids' check-ins and tickets stay under the
# per-address request limit, so every refusal below is the cohort's, not the rate limiter's
SYBILS_PER_ROUND = 20
ATTACKER = "203.0.113.66"


class At:
    """A Flask test client whose every request comes from one remote address."""

    def __init__(self, test_client, addr: str):
        self.test_client, self.addr = test_client, addr

    def open(self, *args, **kwargs):
        """The test client's open, from self.addr."""
        return self.test_client.open(*args, environ_base={"REMOTE_ADDR": self.addr}, **kwargs)


class Clock:
    """A settable clock for the coordinator (windows and deadlines without sleeping)."""

    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


@pytest.fixture
def defaults(tiny_bundle, tmp_path) -> dict:
    """The server's defaults (cohorts of 10 + 30 %, one member per network, proof of work of 18
    bits, bounded influence), with only the data dir, logs and the ticker set for a test, and plain
    aggregation: these members report plain updates (tests/server/test_secure_rounds.py: secure)."""
    return {"BUNDLE_DIR": str(tiny_bundle), "DATA_DIR": str(tmp_path / "data"), "TICK_INTERVAL_S": 0,
            "LOG_LEVEL": "WARNING", "ADMIN_TOKEN": ADMIN_TOKEN, "AGGREGATION": "plain"}


def started(settings: dict):
    """(app, its coordinator's settable clock)."""
    app = create_app(settings)
    clock = Clock()
    app.extensions["fedurl.coordinator"].clock = clock
    return app, clock


def members(app, round_id: int) -> list[tuple[str, str]]:
    """(client_id, network) of a round's cohort, from the database."""
    with db.transaction(app.extensions["fedurl.engine"]) as conn:
        return db.cohort(conn, round_id)


def report(fed: FederatedClient, value: float = 0.1, examples: int = 10) -> dict:
    """A selected client's round: model, ticket, upload."""
    fed.fetch_model()
    return fed.upload(small_delta(value), fed.ticket(), examples, 5.0, 4.0)


def test_one_address_with_unlimited_ids_lands_at_most_one_member_of_any_cohort_and_never_a_round(defaults):
    """Three rounds; before each, one address invents and enrolls ids for ATTACK_S seconds (paying
    the puzzle each time) and checks them all in; 12 honest clients on 12 networks check in too."""
    # Prepare
    app, clock = started(defaults)
    web, coordinator = app.test_client(), app.extensions["fedurl.coordinator"]
    honest = [FederatedClient(At(web, f"198.51.{i}.7")) for i in range(12)]
    for fed in honest:
        fed.enroll()
    sybils: list[FederatedClient] = []
    for round_index in range(3):
        # Execute: the attacker alone, past the selection window
        until, minted = time.monotonic() + ATTACK_S, len(sybils) + SYBILS_PER_ROUND
        while time.monotonic() < until and len(sybils) < minted:
            sybil = FederatedClient(At(web, ATTACKER))
            sybil.enroll()
            sybils.append(sybil)
        states = {sybil.check_in()["state"] for sybil in sybils}
        clock.advance(31)
        coordinator.tick()
        # Assert: alone it gets no cohort, so no round, whatever the number of its ids
        assert states == {"waiting"} and coordinator.round.phase == "selecting"
        assert {s.check_in()["state"] for s in sybils} == {"waiting"}
        # Execute: honest clients check in; the check-in that makes the goal reachable draws
        opened = coordinator.round.id
        for fed in honest:
            fed.check_in()
        assert coordinator.round.phase == "reporting"
        cohort = members(app, opened)
        chosen = {client for client, _ in cohort}
        # Assert: a cohort of at least 10 with at most one of the attacker's ids
        assert len(cohort) >= 10
        assert sum(network == "203.0.113.0/24" for _, network in cohort) <= 1
        # Execute: every selected sybil reports first, the others are refused tickets
        for sybil in sybils:
            if sybil.client_id in chosen:
                assert sybil.check_in()["state"] == "selected"
                report(sybil, value=-0.5, examples=1000)
            else:
                assert sybil.check_in()["state"] == "not_selected"
                with pytest.raises(ProtocolError) as refused:
                    sybil.ticket()
                assert refused.value.code == "not_selected"
        for fed in honest:
            if fed.client_id in chosen and coordinator.round.id == opened:
                report(fed)
        # Assert: the round closed with honest reports in the majority
        assert coordinator.version == round_index + 2
        with db.transaction(app.extensions["fedurl.engine"]) as conn:
            stored = db.round_stats(conn, [opened])[opened]
        assert stored["participants"] >= 10
    print(f"{len(sybils)} made-up ids enrolled in {3 * ATTACK_S:.0f} s; at most one member of each cohort")
    assert len(sybils) >= 3


def test_no_ticket_without_being_drawn_and_no_report_after_the_round(defaults):
    """Before the draw every ticket is refused; a member's ticket of an ended round is refused."""
    # Prepare
    app, clock = started({**defaults, "IDENTITY": "", "MIN_CLIENTS": 2, "MIN_CLIENTS_FLOOR": 1,
                          "OVER_SELECTION": 0.5})
    web, coordinator = app.test_client(), app.extensions["fedurl.coordinator"]
    feds = [FederatedClient(At(web, f"198.51.{i}.7")) for i in range(3)]
    for fed in feds:
        fed.check_in()
    # Execute / Assert: no ticket while selecting, even for a client that checked in
    with pytest.raises(ProtocolError) as refused:
        feds[0].ticket()
    assert refused.value.code == "not_selected"
    clock.advance(31)
    coordinator.tick()
    drawn = [fed for fed in feds if fed.check_in()["state"] == "selected"]
    assert len(drawn) == 3  # ceil(2 * 1.5)
    late = drawn[2]
    late.fetch_model()
    late_ticket = late.ticket()
    report(drawn[0])
    report(drawn[1])  # the goal count: the round closes
    with pytest.raises(ProtocolError) as refused:
        late.upload(small_delta(), late_ticket, 10, 5.0, 4.0)
    assert refused.value.code == "round_closed"


def test_a_waiting_check_in_says_how_many_eligible_clients_are_there_and_how_many_are_needed(defaults):
    """The page shows the cohort forming: a waiting answer counts eligible check-ins (ids on one
    network count once, as the draw does) against the goal."""
    app, _ = started({**defaults, "IDENTITY": "", "MIN_CLIENTS": 4})
    web = app.test_client()
    answers = [FederatedClient(At(web, address)).check_in()
               for address in ("198.51.1.7", "198.51.2.7", "198.51.2.8", "198.51.3.7")]
    assert [(a["state"], a["checked_in"], a["needed"]) for a in answers] == [
        ("waiting", 1, 4), ("waiting", 2, 4), ("waiting", 2, 4), ("waiting", 3, 4)]


def test_a_client_that_did_not_enroll_cannot_check_in(defaults):
    """IDENTITY=pow (the default): check-ins and tickets of unenrolled ids are 403 not_enrolled."""
    app, _ = started(defaults)
    fed = FederatedClient(At(app.test_client(), "198.51.100.7"))
    for call in (fed.check_in, fed.ticket):
        with pytest.raises(ProtocolError) as refused:
            call()
        assert refused.value.code == "not_enrolled"
    assert fed.enroll()["enrolled"] is True
    assert fed.check_in()["state"] == "waiting"


def test_an_operator_token_enrolls_and_a_forged_one_does_not(defaults):
    """IDENTITY=token: the operator's HMAC-signed token for this id, and nothing else."""
    key = "operator-enrollment-key-0123456789abcdef"
    app, clock = started({**defaults, "IDENTITY": "token", "ENROLL_HMAC_KEY": key})
    fed = FederatedClient(At(app.test_client(), "198.51.100.7"))
    expires = int(clock.now) + 3600
    import hashlib
    import hmac

    from server.identity import _b64
    signature = _b64(hmac.new(key.encode(), EnrollmentTokens.message(fed.client_id, expires),
                              hashlib.sha256).digest())
    with pytest.raises(ProtocolError) as refused:
        fed.enroll(token=f"{fed.client_id}.{expires}.{_b64(b'x' * 32)}")
    assert refused.value.code == "token_invalid"
    assert fed.enroll(token=f"{fed.client_id}.{expires}.{signature}")["enrolled"] is True


def test_too_few_reports_by_the_deadline_abandon_the_round_and_a_new_cohort_is_drawn(defaults):
    """Bonawitz et al.: a round that misses its reporting deadline is abandoned, not published."""
    app, clock = started({**defaults, "IDENTITY": "", "MIN_CLIENTS": 2, "MIN_CLIENTS_FLOOR": 2})
    web, coordinator = app.test_client(), app.extensions["fedurl.coordinator"]
    feds = [FederatedClient(At(web, f"198.51.{i}.7")) for i in range(3)]
    for fed in feds:
        fed.check_in()
    clock.advance(31)
    coordinator.tick()
    first = coordinator.round.id
    selected = [fed for fed in feds if fed.check_in()["state"] == "selected"]
    report(selected[0])
    # Execute
    clock.advance(601)
    coordinator.tick()
    # Assert
    status = web.get("/api/status").get_json()
    ended = next(r for r in status["rounds"] if r["id"] == first)
    assert ended["status"] == "abandoned" and ended["result_version"] is None
    assert status["version"] == 1 and status["round"]["phase"] == "selecting"


def test_the_phase_and_the_cohort_survive_a_restart(defaults):
    """Check-ins and membership are in the database: a restart keeps who was drawn."""
    settings = {**defaults, "IDENTITY": "", "MIN_CLIENTS": 2}
    app, clock = started(settings)
    feds = [FederatedClient(At(app.test_client(), f"198.51.{i}.7")) for i in range(3)]
    for fed in feds:
        fed.check_in()
    clock.advance(31)
    app.extensions["fedurl.coordinator"].tick()
    before = {fed.client_id: fed.check_in()["state"] for fed in feds}
    # Execute
    again = create_app(settings)
    web = again.test_client()
    after = {fed.client_id: FederatedClient(At(web, "198.51.9.7"), fed.client_id).check_in()["state"]
             for fed in feds}
    # Assert
    assert after == before and "selected" in after.values()


def test_sample_takes_at_most_n_per_network_uniformly():
    """A network with 1,000 ids lands one member; each of its ids is as likely as any other."""
    checkins = [(f"sybil{i:04d}", "203.0.113.0/24") for i in range(1000)]
    checkins += [(f"honest{i}", f"198.51.{i}.0/24") for i in range(12)]
    rng = random.Random(0)
    picked = {}
    for _ in range(2000):
        chosen = cohorts.sample(checkins, 13, 1, rng)
        sybils = [c for c in chosen if c.startswith("sybil")]
        assert len(chosen) == 13 and len(sybils) == 1
        picked[sybils[0]] = picked.get(sybils[0], 0) + 1
    assert len(picked) > 800  # spread over the network's ids, not always its first check-in


@pytest.mark.parametrize("networks, ready", [({"a": 9}, False), ({f"n{i}": 1 for i in range(10)}, True),
                                             ({"a": 5, **{f"n{i}": 1 for i in range(8)}}, False)])
def test_a_cohort_is_drawn_only_when_enough_networks_checked_in(networks, ready):
    """Eligible = at most per_network per network; the goal is MIN_CLIENTS."""
    rules = cohorts.CohortRules(goal=10, window_s=30)
    assert cohorts.ready(rules, 0.0, 31.0, networks) is ready
    assert not cohorts.ready(rules, 0.0, 29.0, {f"n{i}": 1 for i in range(20)})
