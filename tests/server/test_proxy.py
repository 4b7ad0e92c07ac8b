"""PROXY_HOPS: behind a trusted proxy the per-address limits key on X-Forwarded-For, never otherwise."""

from __future__ import annotations

import http.client
import json

import pytest

from server.app import create_app
from server.cli import serving


def tickets(port: int, forwarded_for: list[str]) -> list[int]:
    """Ask for one ticket per X-Forwarded-For value, each as a new client id: the statuses."""
    statuses = []
    for n, address in enumerate(forwarded_for):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("POST", "/api/tickets", json.dumps({"client_id": f"proxied-client-{n}"}),
                               {"Content-Type": "application/json", "X-Forwarded-For": address})
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        finally:
            connection.close()
    return statuses


@pytest.mark.parametrize("hops, expected", [
    (0, [201, 429, 429]),  # no proxy: the header is the client's word, ignored (waitress drops it)
    (1, [201, 201, 429]),  # one proxy: its X-Forwarded-For is the client's address
])
def test_the_address_limits_follow_proxy_hops(config, hops, expected):
    """MAX_TICKETS_PER_ADDR = 1 through fedurl-serve's waitress: two addresses behind one proxy
    get a ticket each only when PROXY_HOPS says a proxy is in front."""
    app = create_app({**config, "PROXY_HOPS": hops, "MAX_TICKETS_PER_ADDR": 1})
    with serving(app) as (_, port):
        assert tickets(port, ["203.0.113.1", "203.0.113.2", "203.0.113.2"]) == expected


def test_a_negative_proxy_hops_stops_the_start(config):
    """A typo cannot silently trust or distrust the header."""
    with pytest.raises(ValueError, match="PROXY_HOPS"):
        create_app({**config, "PROXY_HOPS": -1})
