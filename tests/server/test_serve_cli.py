"""fedurl-serve (server/cli.py): its start message, where to go, in plain words; what it refuses to
start with; and Ctrl-C however it was started."""

from __future__ import annotations

import signal
import urllib.request

import pytest
import sqlalchemy as sa

from server import cli
from tests.server.conftest import write_tiny_bundle
from tests.server.test_durability import ServerProcess


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


@pytest.mark.parametrize("background", [False, True], ids=["at a terminal", "started by a script with &"])
def test_ctrl_c_stops_the_server_however_it_was_started(tmp_path, background):
    """SIGINT ends fedurl-serve, also when a script started it in the background: the child then
    inherits SIGINT ignored and Python installs no KeyboardInterrupt handler (it used to run on)."""
    server = ServerProcess(write_tiny_bundle(tmp_path / "bundle"), tmp_path / "data", background=background)
    try:
        with urllib.request.urlopen(f"{server.url}/api/model", timeout=30) as answer:  # it serves now
            assert answer.status == 200
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(30) == 0
    finally:
        if server.process.poll() is None:
            server.kill()
