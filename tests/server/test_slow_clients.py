"""Slow and idle connections cannot hold fedurl-serve's connection slots (issue H, item 5).

The first test runs the real ``fedurl-serve`` (waitress) as a subprocess on 127.0.0.1, port 0,
opens more slow sockets than CONNECTION_LIMIT (some trickling one header line at a time, some
silent) and checks that /api/model still answers once the timeouts free the slots. Everything
is on loopback and bounded: a fixed number of sockets, every loop bounded in count and time.
The other tests check the timeout rules themselves and the in-process server's 408s.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from server.app import create_app
from server.cli import Timeouts, overdue, serving

REPO = Path(__file__).resolve().parents[2]
SLOW_SOCKETS = 150  # more than CONNECTION_LIMIT (100)
TRICKLING = 100  # of them send a header line every TRICKLE_EVERY_S; the rest send nothing
TRICKLE_EVERY_S = 0.5  # far more often than any timeout: only a whole-request deadline stops them
TIMEOUT_S = 2.0  # IDLE_, HEADER_ and BODY_TIMEOUT_S of the server under test, to keep the test short
ATTACK_AT_MOST_S = 30.0


def start_server(bundle: Path, data_dir: Path, env: dict) -> tuple[subprocess.Popen, int, list[str]]:
    """fedurl-serve on 127.0.0.1:0; returns the process, its port, and its log lines (filled by a thread).
    Stop it with stop_server."""
    environ = {**os.environ, "PYTHONPATH": str(REPO), "FEDURL_TICK_INTERVAL_S": "0",
               "FEDURL_LOG_LEVEL": "INFO", **env}
    process = subprocess.Popen([sys.executable, "-m", "server.cli", "--bundle", str(bundle), "--data-dir",
                                str(data_dir), "--host", "127.0.0.1", "--port", "0"],
                               cwd=REPO, env=environ, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        for line in process.stderr:  # ends when the process does
            lines.append(line)
            if '"listening"' in line:
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(60):
        stop_server(process)
        pytest.fail("fedurl-serve did not start:\n" + "".join(lines[-20:]))
    port = int(json.loads(next(line for line in lines if '"listening"' in line))["url"].rsplit(":", 1)[1])
    return process, port, lines


def stop_server(process: subprocess.Popen) -> None:
    """Terminate fedurl-serve and close its log pipe."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    assert process.stderr is not None
    process.stderr.close()


def get_model(port: int, timeout: float) -> tuple[int, float]:
    """GET /api/model on a fresh connection: (status, seconds taken)."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/api/model")
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        connection.close()


class SlowSockets:
    """SLOW_SOCKETS connections: TRICKLING of them send a request's header lines one at a time, forever."""

    def __init__(self, port: int):
        self.sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(SLOW_SOCKETS)]
        for sock in self.sockets:
            sock.setblocking(False)
        self.stop = threading.Event()
        self.closed_by_server: set[int] = set()
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def _trickle(self) -> None:
        """A header line more on each trickling socket every TRICKLE_EVERY_S, for ATTACK_AT_MOST_S at most."""
        for sock in self.sockets[:TRICKLING]:
            self._send(sock, b"GET /api/model HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + ATTACK_AT_MOST_S
        for line in range(int(ATTACK_AT_MOST_S / TRICKLE_EVERY_S)):
            if self.stop.wait(TRICKLE_EVERY_S) or time.monotonic() > deadline:
                return
            for sock in self.sockets[:TRICKLING]:
                self._send(sock, b"X-Slow-%d: 1\r\n" % line)

    def _send(self, sock: socket.socket, data: bytes) -> None:
        """Send without blocking; note sockets the server has closed."""
        if sock.fileno() in self.closed_by_server:
            return
        try:
            sock.send(data)
        except BlockingIOError:  # not accepted yet and the buffers are full: try again next round
            pass
        except OSError:
            self.closed_by_server.add(sock.fileno())

    def answered_408(self) -> int:
        """How many trickling sockets got the server's 408 JSON (the rest of the bytes unread)."""
        count = 0
        for sock in self.sockets[:TRICKLING]:
            try:
                count += sock.recv(4096).startswith(b"HTTP/1.1 408")
            except OSError:
                pass
        return count

    def close(self) -> None:
        """Stop trickling and close every socket."""
        self.stop.set()
        self.thread.join(ATTACK_AT_MOST_S)
        for sock in self.sockets:
            sock.close()


def test_slow_and_idle_sockets_do_not_take_the_server_down(tiny_bundle, tmp_path):
    """150 sockets (100 trickling headers, 50 silent) against a limit of 100: /api/model still answers,
    within a few timeouts, and the trickling sockets were answered 408."""
    # Prepare: the real server with short timeouts and the default connection limit
    timeouts = {f"FEDURL_{k}_TIMEOUT_S": str(TIMEOUT_S) for k in ("IDLE", "HEADER", "BODY")}
    process, port, log = start_server(tiny_bundle, tmp_path / "data", timeouts)
    try:
        assert get_model(port, 10)[0] == 200
        slow = SlowSockets(port)
        slow.thread.start()
        try:
            # Execute: a client arrives while every slot is held
            time.sleep(0.5)
            status, seconds = get_model(port, timeout=ATTACK_AT_MOST_S - 5)
            # Assert: answered once the timeouts freed slots, while the slow sockets were still at it
            assert status == 200
            assert seconds < 4 * TIMEOUT_S + 3
            assert not slow.stop.is_set() and slow.thread.is_alive()
            assert slow.answered_408() > TRICKLING // 2
        finally:
            slow.close()
        assert get_model(port, 10)[0] == 200
        assert any('"connections_timed_out"' in line for line in log)
    finally:
        stop_server(process)


def channel(**fields) -> SimpleNamespace:
    """A stand-in for waitress's channel: nothing queued or being sent, idle since time 0."""
    request = fields.pop("request", None)
    defaults = {"requests": [], "total_outbufs_len": 0, "will_close": False, "close_when_flushed": False,
                "last_activity": 0.0, "request": request, "timed_request": request, "request_started": 0.0,
                "headers_done": None}
    return SimpleNamespace(**{**defaults, **fields})


def partial(headers_finished: bool = False, completed: bool = False) -> SimpleNamespace:
    """A stand-in for a request waitress is still reading."""
    return SimpleNamespace(headers_finished=headers_finished, completed=completed)


LIMITS = Timeouts(idle=20, header=10, body=60)


@pytest.mark.parametrize("fields, now, reason", [
    ({}, 19.0, None),
    ({}, 21.0, "idle"),
    ({"request": partial()}, 9.0, None),
    ({"request": partial()}, 11.0, "header"),
    ({"request": partial(True), "headers_done": 5.0}, 64.0, None),
    ({"request": partial(True), "headers_done": 5.0}, 66.0, "body"),
    ({"requests": ["being served"]}, 1000.0, None),
    ({"total_outbufs_len": 10}, 1000.0, None),  # still sending: waitress's channel_timeout applies
    ({"will_close": True}, 1000.0, None),
])
def test_timeout_rules(fields, now, reason):
    """Idle since the last byte, headers since the request's first byte, body since the headers."""
    assert overdue(channel(**fields), now, now, LIMITS) == reason


@pytest.mark.parametrize("sent, expected", [
    (b"POST /api/tickets HTTP/1.1\r\nHost: x\r\n", "request headers not complete within 1 s"),
    (b"POST /api/tickets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
     b"\r\n{", "request body not complete within 1 s"),
])
def test_incomplete_requests_get_a_408_json(config, sent, expected):
    """In-process: a request left incomplete is answered 408 request_timeout and closed."""
    app = create_app({**config, "HEADER_TIMEOUT_S": 1, "BODY_TIMEOUT_S": 1, "IDLE_TIMEOUT_S": 1})
    with serving(app) as (host, port):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(sent)
            started, answer = time.monotonic(), b""
            while time.monotonic() - started < 10:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body) == {"error": "request_timeout", "message": expected}
    assert 0.9 < time.monotonic() - started < 4


def test_an_idle_connection_is_closed(config):
    """In-process: a connection that sends nothing is closed after IDLE_TIMEOUT_S, without a response."""
    app = create_app({**config, "IDLE_TIMEOUT_S": 1})
    with serving(app) as (host, port):
        with socket.create_connection((host, port), timeout=10) as sock:
            started = time.monotonic()
            assert sock.recv(4096) == b""
            assert 0.9 < time.monotonic() - started < 4
