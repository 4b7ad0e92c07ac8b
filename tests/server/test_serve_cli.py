"""fedurl-serve's start message (server/cli.py): where to go, in plain words."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from server import cli


class Listening:
    """make_server's waitress server, minus the serving: it has a port and returns from run() at once."""

    effective_port = 5123

    def run(self):
        """Return at once instead of serving forever."""


def test_start_message_names_the_page_and_the_dashboard(monkeypatch, capsys, bundle_dir, tmp_path):
    """One plain line on stdout with the page's URL and the dashboard's; the JSON logs stay on stderr."""
    monkeypatch.setattr(cli, "make_server", lambda app, host, port, threads: Listening())
    cli.main(["--bundle", str(bundle_dir), "--data-dir", str(tmp_path), "--host", "127.0.0.1", "--port", "0"])
    out = capsys.readouterr().out
    assert out == "Open http://127.0.0.1:5123  (dashboard: http://127.0.0.1:5123/dashboard)\n"



def test_a_front_worker_listens_on_loopback_only(capsys, bundle_dir, tmp_path):
    """--front believes the client address and body file nginx names; reachable from other machines,
    anyone could name them (before: --front --host 0.0.0.0 was accepted silently)."""
    for host in ("0.0.0.0", "192.0.2.7", "::", "example.org"):
        with pytest.raises(SystemExit) as stopped:
            cli.parse_args(["--front", "--host", host])
        assert stopped.value.code == 2 and "loopback" in capsys.readouterr().err
    for host in ("127.0.0.1", "::1", "localhost"):
        assert cli.parse_args(["--front", "--host", host]).host == host


def test_a_database_it_cannot_reach_stops_the_start_with_a_reason(request, bundle_dir, tmp_path):
    """PostgreSQL down or refusing connections at start-up: one line naming the database and why,
    not the traceback of an OperationalError from the migrations."""
    # Prepare: a database that takes no connections
    cluster, url = request.getfixturevalue("postgresql_cluster"), request.getfixturevalue("postgresql_url")
    name = sa.make_url(url).database
    cluster.allow_connections(name, False)
    # Execute
    try:
        with pytest.raises(SystemExit) as stopped:
            cli.main(["--bundle", str(bundle_dir), "--data-dir", str(tmp_path), "--db", url])
    finally:
        cluster.allow_connections(name, True)
    # Assert
    message = str(stopped.value.code)
    assert message.startswith(f"fedurl-serve: cannot reach the database postgresql+psycopg://fedurl@/{name}")
    assert "not currently accepting connections" in message
