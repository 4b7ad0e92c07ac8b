"""Admin routes: nothing without the token, wrong tokens throttled, short tokens refused; status
(credentials redacted), close now, rollback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client.protocol import FederatedClient, ProtocolError
from server import admin as admin_module
from server.app import create_app
from server.config import redact_url
from tests.server.conftest import ADMIN_TOKEN, small_delta, snapshot

pytestmark = pytest.mark.databases("sqlite", "postgresql")

REPO = Path(__file__).resolve().parents[2]

ROUTES = [("GET", "/api/admin/status", None), ("POST", "/api/admin/close", None),
          ("POST", "/api/admin/rollback", {"version": 1})]


def call(client, method, path, body=None, headers=None):
    """One admin request."""
    return client.open(path, method=method, json=body, headers=headers or {})


def upload(client, value: float) -> dict:
    """One fresh client uploads a constant delta."""
    fed = FederatedClient(client)
    return fed.upload(small_delta(value), fed.ticket(), 10, 5.0, 4.0)


@pytest.mark.parametrize("method, path, body", ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {ADMIN_TOKEN}",
                                           f"Bearer {ADMIN_TOKEN}x", "Bearer "])
def test_admin_needs_the_token(app, client, method, path, body, authorization):
    """Missing, wrong or non-bearer credentials get 401 and change nothing."""
    upload(client, 0.1)
    before = snapshot(app)
    response = call(client, method, path, body, {"Authorization": authorization} if authorization else {})
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert snapshot(app) == before


@pytest.mark.parametrize("method, path, body", ROUTES)
def test_admin_is_disabled_without_a_configured_token(config, method, path, body):
    """With no ADMIN_TOKEN every admin route is 403, whatever is sent."""
    client = create_app({**config, "ADMIN_TOKEN": None}).test_client()
    response = call(client, method, path, body, {"Authorization": "Bearer None"})
    assert response.status_code == 403
    assert response.get_json() == {"error": "admin_disabled",
                                   "message": "admin routes are disabled: set ADMIN_TOKEN to enable them"}


def test_admin_status_shows_settings_but_not_the_token(client, admin_headers):
    """Admin status adds the effective settings, never the token itself."""
    status = call(client, "GET", "/api/admin/status", headers=admin_headers).get_json()
    assert status["settings"]["MIN_CLIENTS"] == 3
    assert "ADMIN_TOKEN" not in status["settings"] and ADMIN_TOKEN not in str(status)


def test_close_now_aggregates_what_the_round_has(app, client, admin_headers):
    """One update (below the floor) and an admin close: version 2 = version 1 + that delta."""
    v1 = app.extensions["fedurl.coordinator"].store.weights(1)
    upload(client, 0.5)
    response = call(client, "POST", "/api/admin/close", headers=admin_headers)
    assert response.status_code == 200
    assert response.get_json() == {"version": 2, "ended_round": 1, "round": 2, "reason": "admin"}
    v2 = app.extensions["fedurl.coordinator"].store.weights(2)
    for name in v1:
        np.testing.assert_allclose(v2[name], v1[name] + 0.5, rtol=1e-6)


def test_close_now_refuses_an_empty_round(app, client, admin_headers):
    """Nothing to aggregate: 409 empty_round, no version written."""
    before = snapshot(app)
    response = call(client, "POST", "/api/admin/close", headers=admin_headers)
    assert (response.status_code, response.get_json()["error"]) == (409, "empty_round")
    assert snapshot(app) == before


def test_rollback_publishes_the_old_weights_and_abandons_the_branch(app, client, admin_headers):
    """Roll back from 3 to 1: version 4 holds version 1's weights with parent 1; the open
    round is aborted, and deltas computed on the abandoned version 3 are refused as stale."""
    # Prepare: versions 2 and 3, then one update and one outstanding ticket on version 3
    for value in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
        upload(client, value)
    upload(client, 0.7)
    late = FederatedClient(client)
    late_ticket = late.ticket()
    # Execute
    response = call(client, "POST", "/api/admin/rollback", {"version": 1}, admin_headers)
    # Assert
    assert response.get_json() == {"version": 4, "ended_round": 3, "round": 4, "reason": "rollback"}
    store = app.extensions["fedurl.coordinator"].store
    assert store.manifest(4)["parent_version"] == 1
    for name, array in store.weights(1).items():
        np.testing.assert_array_equal(store.weights(4)[name], array)
    status = late.status()
    assert [r["status"] for r in status["rounds"]] == ["closed", "closed", "aborted", "open"]
    assert status["versions"][-1]["kind"] == "rollback"
    with pytest.raises(ProtocolError) as refused:
        late.upload(small_delta(0.1), late_ticket, 10, 5.0, 4.0)
    assert refused.value.code == "stale_version"


@pytest.mark.parametrize("body, status, code", [({"version": 99}, 404, "unknown_version"),
                                                ({"version": 1}, 409, "not_earlier"),
                                                ({"version": "1"}, 400, "bad_request"),
                                                (None, 400, "bad_request")])
def test_rollback_refuses_bad_targets(app, client, admin_headers, body, status, code):
    """Unknown or current versions and malformed bodies are refused and change nothing."""
    before = snapshot(app)
    response = call(client, "POST", "/api/admin/rollback", body, admin_headers)
    assert (response.status_code, response.get_json()["error"]) == (status, code)
    assert snapshot(app) == before


def test_wrong_tokens_are_throttled_per_address(app, monkeypatch):
    """Five wrong tokens from one address, then 429 for every admin request from it (the right token
    too, so guessing fast gains nothing) until a token refills; other addresses are not affected."""
    now = [1000.0]
    monkeypatch.setattr(admin_module, "clock", lambda: now[0])
    guesser = app.test_client()
    guesser.environ_base["REMOTE_ADDR"] = "203.0.113.7"
    wrong, right = {"Authorization": "Bearer guess"}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    statuses = [call(guesser, "GET", "/api/admin/status", headers=wrong).status_code for _ in range(5)]
    assert statuses == [401] * 5
    for headers in (wrong, right):
        response = call(guesser, "GET", "/api/admin/status", headers=headers)
        assert (response.status_code, response.get_json()["error"]) == (429, "rate_limited")
        assert response.headers["Retry-After"] == "12"  # 5 per minute: one back every 12 s
    admin = app.test_client()
    admin.environ_base["REMOTE_ADDR"] = "198.51.100.1"
    assert call(admin, "GET", "/api/admin/status", headers=right).status_code == 200
    now[0] += 12
    assert call(guesser, "GET", "/api/admin/status", headers=right).status_code == 200
    assert call(guesser, "GET", "/api/admin/status", headers=wrong).status_code == 401
    assert call(guesser, "GET", "/api/admin/status", headers=right).status_code == 429


def test_a_right_token_takes_nothing_from_the_allowance(client, admin_headers):
    """Only failures count: an admin may call as often as they like."""
    statuses = {call(client, "GET", "/api/admin/status", headers=admin_headers).status_code for _ in range(9)}
    assert statuses == {200}


@pytest.mark.parametrize("token, accepted", [("x" * 31, False), ("short", False), ("é" * 15, False),
                                             ("x" * 32, True), ("é" * 16, True), ("", True), (None, True)])
def test_admin_tokens_under_32_bytes_stop_start_up(config, token, accepted):
    """Under 32 bytes (UTF-8) stops start-up, saying how to make a token; unset or empty disables admin."""
    if accepted:
        create_app({**config, "ADMIN_TOKEN": token})
    else:
        with pytest.raises(ValueError, match=r"ADMIN_TOKEN is \d+ bytes; it must be at least 32 .*token_url"):
            create_app({**config, "ADMIN_TOKEN": token})


def test_fedurl_serve_explains_a_short_admin_token(tiny_bundle, tmp_path):
    """fedurl-serve exits at once with the reason, instead of serving a guessable admin API."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "FEDURL_ADMIN_TOKEN": "hunter2"}
    result = subprocess.run([sys.executable, "-m", "server.cli", "--bundle", str(tiny_bundle), "--data-dir",
                             str(tmp_path / "data"), "--port", "0"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "fedurl-serve: ADMIN_TOKEN is 7 bytes; it must be at least 32" in result.stderr
    assert "hunter2" not in result.stderr


def test_admin_status_redacts_database_credentials(app, client, admin_headers):
    """A DATABASE_URL's password is shown as ***, user, host and database kept."""
    app.config["DATABASE_URL"] = "postgresql+psycopg://fedurl:hunter2@db.internal:5432/fedurl?sslmode=require"
    status = call(client, "GET", "/api/admin/status", headers=admin_headers).get_json()
    assert status["settings"]["DATABASE_URL"] == "postgresql+psycopg://fedurl:***@db.internal:5432/fedurl?sslmode=require"
    assert "hunter2" not in json.dumps(status)


@pytest.mark.parametrize("value, shown", [
    ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
    ("mysql+pymysql://u@h/db?password=pw&charset=utf8", "mysql+pymysql://u@h/db?password=***&charset=utf8"),
    ("postgresql://u:pw@h:notaport/db", "postgresql://u:***@h:notaport/db"),
    ("postgresql://h/db?sslkey=/etc/k.pem&api_token=t", "postgresql://h/db?sslkey=***&api_token=***"),
    ("sqlite:////var/lib/fedurl/fedurl.sqlite3", "sqlite:////var/lib/fedurl/fedurl.sqlite3"),
    ("bundles/default", "bundles/default"),
])
def test_urls_in_settings_are_redacted(value, shown):
    """Passwords in the authority and secret-looking query values go; everything else stays readable."""
    assert redact_url(value) == shown
