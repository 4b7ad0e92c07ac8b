"""fedurl-serve: run the aggregation server with waitress (a production WSGI server, threads).

    fedurl-serve --bundle bundles/default [--data-dir DIR] [--db URL] [--host H --port P]

Flags override FEDURL_* environment variables and instance/config.py (server/README.md).
``flask --app server.app run`` serves the same app with Flask's development server.

Slow clients: waitress reads whole requests in one thread before a request thread sees them, but
each open connection takes one of CONNECTION_LIMIT slots. A connection that sends nothing for
IDLE_TIMEOUT_S, whose headers are not complete HEADER_TIMEOUT_S after their first byte, or whose
body is not complete BODY_TIMEOUT_S after the headers is closed (408 for the last two), so clients
that trickle bytes cannot hold every slot for long. Errors waitress answers itself (malformed
request line or headers, unsupported Transfer-Encoding, body over its limit) are JSON like the
app's (docs/PROTOCOL.md).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import MultiSocketServer, TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher

from server import db, logs, web
from server.api import BODY_FILE_HEADER
from server.app import create_app

FRONT_DIR = "front"  # under DATA_DIR: fedurl-deploy's nginx.conf, public/ and tmp/
CLEANUP_INTERVAL_S = 1.0  # how often the timeouts are checked (waitress's default is 30 s)
# bytes per socket read: waitress's 8 KiB took 128 trips through its event loop and parser for a
# 1 MB update body; a read returns what has arrived, so a slow client costs no more memory
RECV_BYTES = 256 * 1024
# Errors waitress answers before the app sees the request: its status -> (our status, code).
# 501 is waitress's answer to a Transfer-Encoding other than chunked: the client's fault, so a 400.
WAITRESS_STATUS = {400: 400, 413: 413, 431: 431, 501: 400, 500: 500}
WAITRESS_CODES = {400: "bad_request", 413: "payload_too_large", 431: "headers_too_large",
                  500: "internal_error"}
TIMEOUT_MESSAGES = {"header": "request headers not complete within {:g} s",
                    "body": "request body not complete within {:g} s"}


@dataclass(frozen=True)
class Timeouts:
    """How long a connection may take, in seconds (server/README.md: IDLE_, HEADER_, BODY_TIMEOUT_S)."""

    idle: float
    header: float
    body: float

    @classmethod
    def from_config(cls, config) -> Timeouts:
        """The app's settings."""
        return cls(config["IDLE_TIMEOUT_S"], config["HEADER_TIMEOUT_S"], config["BODY_TIMEOUT_S"])


def front_body_dir(data_dir) -> Path:
    """Where fedurl-deploy's nginx writes request bodies (``client_body_temp_path``)."""
    return Path(data_dir).resolve() / FRONT_DIR / "tmp" / "body"


def trust_front_bodies(app) -> None:
    """Take upload bodies from the files fedurl-deploy's nginx names (``FRONT_BODY_DIR``): the app
    runs behind it, reachable only on 127.0.0.1.
    """
    app.config["FRONT_BODY_DIR"] = str(front_body_dir(app.config["DATA_DIR"]))


def json_error(status: int, code: str, message: str, reason: str) -> bytes:
    """A complete HTTP/1.1 response with the app's JSON error body; the connection closes after it."""
    body = json.dumps({"error": code, "message": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


class JsonErrorTask(ErrorTask):
    """waitress's own refusals (bad request line or headers, Transfer-Encoding gzip, ...) as JSON."""

    def execute(self) -> None:
        """Write the JSON error and close the connection after it."""
        error = self.request.error
        status = WAITRESS_STATUS.get(error.code, 400)
        code = WAITRESS_CODES[status]
        message = str(error.body)
        if error.code == 501:
            message = f"{message} Send the body with Content-Length (or Transfer-Encoding: chunked)."
        elif status == 413:
            message = f"request body is larger than the server's limit ({message})"
        body = json.dumps({"error": code, "message": message}).encode()
        self.status = f"{status} {error.reason if status == error.code else 'Bad Request'}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class TimedChannel(HTTPChannel):
    """An HTTP connection that remembers when its current request began and when its headers ended."""

    error_task_class = JsonErrorTask
    timed_request: object = None  # the partial request the two times below belong to
    request_started = 0.0
    headers_done: float | None = None

    def received(self, data: bytes) -> bool:
        """Parse data as waitress does, then note the times of a new partial request."""
        result = super().received(data)
        request = self.request
        if request is not None:
            now = time.monotonic()
            if request is not self.timed_request:
                self.timed_request, self.request_started, self.headers_done = request, now, None
            if request.headers_finished and self.headers_done is None:
                self.headers_done = now
        return result


def overdue(channel: Any, now: float, now_wall: float, timeouts: Timeouts) -> str | None:
    """Why channel should be closed now ("idle", "header", "body"), or None.

    Never while a request is being served or a response is still going out (waitress's own
    channel_timeout covers a client that stops reading).
    """
    if channel.requests or channel.total_outbufs_len or channel.will_close or channel.close_when_flushed:
        return None
    request = channel.request
    if request is None or request is not channel.timed_request:
        return "idle" if now_wall - channel.last_activity > timeouts.idle else None
    if not request.headers_finished:
        return "header" if now - channel.request_started > timeouts.header else None
    if not request.completed and channel.headers_done is not None:
        return "body" if now - channel.headers_done > timeouts.body else None
    return None


class GuardedServer(TcpWSGIServer):
    """waitress's TCP server with TimedChannel connections and the three timeouts enforced."""

    channel_class = TimedChannel

    def __init__(self, *args, timeouts: Timeouts, **kwargs):
        self.timeouts = timeouts
        super().__init__(*args, **kwargs)

    def maintenance(self, now: float) -> None:
        """Run waitress's inactivity check, then close connections past a timeout (408 if mid-request)."""
        super().maintenance(now)
        closed: dict[str, int] = {}
        monotonic = time.monotonic()
        for channel in list(self.active_channels.values()):
            reason = overdue(channel, monotonic, now, self.timeouts)
            if reason is None:
                continue
            if reason in TIMEOUT_MESSAGES:
                limit = self.timeouts.header if reason == "header" else self.timeouts.body
                response = json_error(408, "request_timeout", TIMEOUT_MESSAGES[reason].format(limit),
                                      "Request Timeout")
                try:  # best effort, never blocking: a client that reads nothing just gets the close
                    channel.socket.send(response)
                except OSError:
                    pass
            channel.request = None
            channel.will_close = True
            closed[reason] = closed.get(reason, 0) + 1
        if closed:
            logs.event("connections_timed_out", closed=closed, open=len(self.active_channels))


def make_server(app, host: str, port: int, threads: int = 8):
    """A waitress server for app on host:port with its connection limit, timeouts and JSON errors.

    Like ``waitress.create_server`` (one listening socket per address host resolves to), with
    GuardedServer in place of TcpWSGIServer.
    """
    config = app.config
    # waitress buffers whole bodies before the app sees them; past twice the app's own limit it
    # refuses them itself (413, JSON via JsonErrorTask), below that the app answers 413.
    # Behind a proxy (PROXY_HOPS > 0) X-Forwarded-For must reach the app's ProxyFix; waitress would
    # otherwise strip it as untrusted.
    adj = Adjustments(host=host, port=port, threads=threads, connection_limit=config["CONNECTION_LIMIT"],
                      cleanup_interval=CLEANUP_INTERVAL_S, asyncore_use_poll=True, recv_bytes=RECV_BYTES,
                      max_request_body_size=2 * config["MAX_CONTENT_LENGTH"],
                      clear_untrusted_proxy_headers=config["PROXY_HOPS"] == 0)
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    socket_map: dict = {}
    timeouts = Timeouts.from_config(config)
    servers = [GuardedServer(app, socket_map, dispatcher=dispatcher, adj=adj, sockinfo=info,
                             timeouts=timeouts) for info in adj.listen]
    if len(servers) == 1:
        return servers[0]
    listening = [(s.effective_host, s.effective_port) for s in servers]
    return MultiSocketServer(socket_map, adj, listening, dispatcher, servers[-1].log_info)


def handle_ctrl_c() -> None:
    """Make Ctrl-C (SIGINT) stop the server however the process was started: a script that starts
    it in the background hands it SIGINT ignored (POSIX: asynchronous commands without job
    control), and Python then installs no KeyboardInterrupt handler, so SIGINT did nothing. Call
    it first thing, before anything says the server is listening.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def serving(app, threads: int = 4) -> Iterator[tuple[str, int]]:
    """Serve app with make_server on 127.0.0.1 at a free port in a daemon thread; yield (host, port)."""
    server = make_server(app, "127.0.0.1", 0, threads)
    stop = threading.Event()

    def loop() -> None:
        """Run waitress's loop, a short poll at a time, until stop."""
        while not stop.is_set():
            wasyncore.loop(timeout=0.05, map=server._map, use_poll=True, count=1)

    thread = threading.Thread(target=loop, name="fedurl-waitress", daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.effective_port
    finally:
        stop.set()
        thread.join()
        for dispatcher in list(server._map.values()):
            try:
                dispatcher.close()
            except OSError:
                pass
        server.task_dispatcher.shutdown()


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; unknown options are errors."""
    parser = argparse.ArgumentParser(prog="fedurl-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="bundle imported as version 1 on first start (fedurl-export --out)")
    parser.add_argument("--data-dir", help="where versions and the SQLite file live "
                                           "(default: the instance folder, <repo>/instance)")
    parser.add_argument("--db", help="SQLAlchemy database URL (default: sqlite:///DATA_DIR/fedurl.sqlite3)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=5000, help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=8, help="request threads (default: %(default)s)")
    parser.add_argument("--front", action="store_true",
                        help="a worker that fedurl-deploy starts behind nginx: trust one proxy hop and "
                             "its upload body files, leave the page's files to nginx, log "
                             "worker_listening")
    args = parser.parse_args(argv)
    if args.front and not is_loopback(args.host):
        parser.error(f"--front trusts X-Forwarded-For and {BODY_FILE_HEADER} from whoever connects: "
                     f"listen on a loopback address (127.0.0.1, ::1), behind nginx, not on {args.host}")
    return args


def is_loopback(host: str) -> bool:
    """Whether host is a loopback address (or localhost): only this machine can connect."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def main(argv=None) -> None:
    """Create the app, start compressing its static files in the background, and serve until interrupted."""
    handle_ctrl_c()
    args = parse_args(argv)
    overrides = {key: value for key, value in
                 (("BUNDLE_DIR", args.bundle), ("DATA_DIR", args.data_dir), ("DATABASE_URL", args.db))
                 if value is not None}
    try:
        app = create_app({**overrides, "PROXY_HOPS": 1} if args.front else overrides)
    except (RuntimeError, ValueError, db.DatabaseUnavailable) as exc:
        raise SystemExit(f"fedurl-serve: {exc}") from None
    if args.front:
        trust_front_bodies(app)
    server = make_server(app, args.host, args.port, args.threads)
    web.precompress(app, pages=not args.front)  # background: requests meanwhile get files as they are
    port = server.effective_port if hasattr(server, "effective_port") else args.port
    url = f"http://{args.host}:{port}"
    logs.event("worker_listening" if args.front else "listening", url=url, pid=os.getpid(),
               version=app.extensions["fedurl.coordinator"].version,
               connection_limit=app.config["CONNECTION_LIMIT"],
               dp_noise_multiplier=app.config["DP_NOISE_MULTIPLIER"], **{
                   f"{k}_timeout_s": v for k, v in asdict(Timeouts.from_config(app.config)).items()})
    print(f"Open {url}  (dashboard: {url}/dashboard)", flush=True)  # for people, beside the JSON logs
    server.run()


if __name__ == "__main__":
    main()
