"""Serve a WSGI app over real HTTP on a loopback port from a daemon thread.

For what runs the real server in-process and talks to it over sockets: the simulation
(``fedurl-simulate``), the benchmarks and the end-to-end tests. Production uses ``fedurl-serve``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from werkzeug.serving import WSGIRequestHandler, make_server


class _QuietHandler(WSGIRequestHandler):
    """werkzeug's handler without its access-log line per request (progress bars own stderr)."""

    def log_request(self, *args, **kwargs) -> None:
        """Drop the access log."""


@contextmanager
def serving(app, name: str = "fedurl-background-server") -> Iterator[str]:
    """Serve app on 127.0.0.1 at a free port until the block ends; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
