"""Browser fixtures for tests/privacy: Debian's chromium and a static server for web_client/.

The secure-aggregation module is not wired into the Flask app yet, so these tests serve
``web_client/`` themselves, under ``/static/`` as the app does, from a throwaway HTTP server on
127.0.0.1 (a secure context: WebCrypto's subtle API needs one).
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import shutil
import threading
from pathlib import Path

import pytest
from secagg_support import BLANK, BOOT

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "web_client"



def _chromium_args() -> list[str]:
    """CHROMIUM_ARGS of tests/web/page_helpers.py, one list for the whole project."""
    path = REPO / "tests" / "web" / "page_helpers.py"
    spec = importlib.util.spec_from_file_location("_web_page_helpers", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.CHROMIUM_ARGS)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """/ is a blank page; /static/<path> is web_client/<path>; nothing else."""

    def translate_path(self, path):
        path = path.split("?", 1)[0]
        if path.startswith("/static/"):
            return super().translate_path("/" + path[len("/static/"):])
        return str(WEB / ".missing")

    def do_GET(self):
        if self.path == "/":
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(BLANK)))
            self.end_headers()
            self.wfile.write(BLANK)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """The built-in launch args plus Debian's chromium (Playwright cannot download one here)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (`make chromium`)")
    return {**browser_type_launch_args, "executable_path": chromium, "args": _chromium_args()}


@pytest.fixture(scope="session")
def static_url():
    """http://127.0.0.1:<port> serving web_client under /static/."""
    handler = functools.partial(_Handler, directory=str(WEB))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="secagg-static", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def base_url(static_url) -> str:
    """pytest-playwright's base_url: our static server (its own fixture warns under pytest 9)."""
    return static_url


@pytest.fixture
def sa_page(page, static_url):
    """One page with the module loaded."""
    page.goto(static_url + "/")
    page.evaluate(BOOT)
    return page
