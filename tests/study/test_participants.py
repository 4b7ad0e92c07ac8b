"""fedurl-participants: the demo's simulated people form a secure cohort through the real server."""

from __future__ import annotations

import threading

import pytest

from client.protocol import FederatedClient
from server import db
from server.app import create_app
from study import participants
from study.background import serving
from tests.conftest import REPO

URLS = REPO / "pretrained" / "validation.txt"  # public URLs that ship with the repository


def demo_settings(bundle_dir, data_dir, cohort: int) -> dict:
    """make demo's secure settings: a cohort of exactly `cohort`, drawn as soon as it checked in."""
    return {"BUNDLE_DIR": str(bundle_dir), "DATA_DIR": str(data_dir), "AGGREGATION": "secure",
            "MIN_CLIENTS": cohort, "OVER_SELECTION": 0.0, "SELECTION_WINDOW_S": 0.0,
            "MAX_MEMBERS_PER_NETWORK": 100, "PUBLISH_GATE": "off", "LOG_LEVEL": "ERROR",
            "TICKETS_PER_CLIENT_PER_MIN": 1e9, "REQUESTS_PER_ADDR_PER_MIN": 1e9}


def test_three_participants_complete_a_secure_round(bundle_dir, tmp_path):
    """A cohort of 3 participants: each trains, the round's four phases run, and the server publishes
    version 2 from the unmasked sum of exactly those three, with no update stored in clear."""
    app = create_app(demo_settings(bundle_dir, tmp_path / "server", cohort=3))
    with serving(app) as url:
        code = participants.main(["--server", url, "--count", "3", "--rounds", "1", "--urls", str(URLS),
                                  "--urls-each", "8", "--wait-s", "10"])
    assert code == 0
    record = app.extensions["fedurl.coordinator"].manifest
    assert record["model_version"] == 2
    assert (record["aggregation"]["mode"], record["aggregation"]["survivors"]) == ("secure", 3)
    with db.transaction(app.extensions["fedurl.engine"]) as conn:
        assert len(db.cohort(conn, 1)) == 3
        assert db.accepted_count(conn) == 0


def test_a_round_waits_for_the_person_and_says_how_many_checked_in(bundle_dir, tmp_path):
    """Cohort 4 with 3 participants: the round stays in selection while they wait, a fourth check-in
    is told 3 of the 4 needed are there and draws the cohort."""
    app = create_app(demo_settings(bundle_dir, tmp_path / "server", cohort=4))
    stop = threading.Event()
    with serving(app) as url:
        argv = ["--server", url, "--count", "3", "--rounds", "1", "--urls", str(URLS), "--urls-each", "8",
                "--wait-s", "10"]
        thread = threading.Thread(target=participants.main, args=(argv, stop), daemon=True)
        thread.start()
        person = FederatedClient(url)
        person.enroll()
        try:
            for _ in range(300):  # bounded: 3 enrollments (proof of work) and check-ins
                with db.transaction(app.extensions["fedurl.engine"]) as conn:
                    if sum(db.checkins_by_network(conn, 1).values()) == 3:
                        break
                stop.wait(0.1)
            first = person.check_in()
        finally:
            stop.set()
            thread.join(timeout=30)
    assert app.extensions["fedurl.coordinator"].manifest["model_version"] == 1
    assert (first["state"], first["phase"]) == ("selected", "advertise")  # the 4th check-in drew the cohort
    assert not thread.is_alive()


@pytest.mark.parametrize("argv, message", [(["--count", "0"], "must be >= 1"),
                                           (["--urls", "/nonexistent.txt"], "not found")])
def test_bad_arguments_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        participants.main(argv)
    assert message in str(raised.value)
