"""Admin routes: nothing without the token; status, close now, rollback."""

from __future__ import annotations

import numpy as np
import pytest

from client.protocol import FederatedClient, ProtocolError
from server.app import create_app
from tests.server.conftest import ADMIN_TOKEN, small_delta, snapshot

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
