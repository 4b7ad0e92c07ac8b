"""Browser tests: Debian's chromium driven by pytest-playwright against the real server.

One WSGI server per session listens on 127.0.0.1 (port 0) in a thread; each test installs a
fresh ``create_app`` (temp data dir, the session's real bundle) behind it, so every test starts
at global version 1 with an empty database, and every browser context starts with empty storage.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from page_helpers import ADMIN_TOKEN, CHROMIUM_ARGS
from playwright.sync_api import expect

from server.app import create_app
from study.background import serving

REPO = Path(__file__).resolve().parents[2]

# Page state can take a while on a shared 2-core box (uploads, model swaps): wait, never sleep.
expect.set_options(timeout=20_000)


class AppSlot:
    """A WSGI app that forwards to the Flask app the current test installed."""

    def __init__(self):
        self.app = None

    def __call__(self, environ, start_response):
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"no app installed"]
        return self.app(environ, start_response)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """The built-in launch args plus Debian's chromium (Playwright cannot download one here)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (`make chromium`)")
    return {**browser_type_launch_args, "executable_path": chromium, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def app_slot():
    """The session's HTTP server; tests swap the app behind it."""
    slot = AppSlot()
    with serving(slot, name="fedurl-web-tests") as url:
        slot.port = int(url.rsplit(":", 1)[1])
        yield slot


@pytest.fixture(scope="session")
def base_url(app_slot) -> str:
    """Root URL of the live server, so tests use relative page.goto paths."""
    return f"http://127.0.0.1:{app_slot.port}"


@pytest.fixture
def server_config(bundle_dir: Path, tmp_path: Path) -> dict:
    """Settings of this test's server: a fresh data dir, rounds of 3 clients, no deadline thread.

    Every browser runs on 127.0.0.1, so the [T2] limits are raised: a cheap puzzle (8 bits; each
    page still enrolls), any number of members per network, no selection window, fast polls, and
    the demo's gate tolerance (one page training alone on one URL raised the loss 5.6 %).
    Selection is open (a page takes its ticket as soon as it checks in) and aggregation plain, so one
    page can train alone; test_cohort.py runs the server-chosen cohort with three pages, and
    test_secure_cohort.py a secure one with three pages and two Python clients. No DP noise: a
    round of one to three pages cannot be private (docs/PRIVACY.md); test_main.py turns it on for the budget.
    """
    return {"BUNDLE_DIR": str(bundle_dir), "DATA_DIR": str(tmp_path / "server"), "ADMIN_TOKEN": ADMIN_TOKEN,
            "MIN_CLIENTS": 3, "MIN_CLIENTS_FLOOR": 2, "TICK_INTERVAL_S": 0, "LOG_LEVEL": "WARNING",
            "TICKETS_PER_CLIENT_PER_MIN": 600.0, "REQUESTS_PER_ADDR_PER_MIN": 100_000.0,
            "SELECTION": "open", "POW_DIFFICULTY": 8, "MAX_MEMBERS_PER_NETWORK": 1000,
            "SELECTION_WINDOW_S": 0.0, "CHECKIN_POLL_S": 0.2, "GATE_TOLERANCE": 0.5, "AGGREGATION": "plain",
            "DP_NOISE_MULTIPLIER": 0.0}


@pytest.fixture(autouse=True)
def live_app(app_slot, server_config):
    """A fresh server app for this test, installed behind the session's port."""
    app = create_app(server_config)
    app_slot.app = app
    yield app
    app_slot.app = None


@pytest.fixture
def module_page(page):
    """A blank page on the server's origin: web_client's ES modules import there, no app starts."""
    page.route("**/blank-test-page", lambda route: route.fulfill(
        status=200, content_type="text/html", body="<!doctype html><title>module tests</title>"))
    page.goto("/blank-test-page")
    return page


@pytest.fixture(scope="session")
def raw_url_lines() -> list[str]:
    """Raw lines (schemes, CRLF, a BOM, long paths) of the shared URL files; skip where absent."""
    folder = REPO.parent / "shared" / "data" / "urls"
    names = ("1.Benign_list_big_final.csv", "kasztp.txt", "tranco_top_100k.csv")
    if not all((folder / name).is_file() for name in names):
        pytest.skip(f"real URL data not available in {folder}")
    lines = []
    for name in names:
        with open(folder / name, encoding="utf-8", newline="") as handle:
            lines += handle.read().splitlines(keepends=True)[:1000]
    return lines


@pytest.fixture(scope="session")
def canonical_urls() -> list[str]:
    """Canonical URLs to type and train on: kasztp's links where the shared data is present, else
    the top-sites domains that npm installs, so the completer and training checks never skip."""
    from formats.urls import DEFAULT_CORPUS, load_urls, read_corpus

    kasztp = REPO.parent / "shared" / "data" / "urls" / "kasztp.txt"
    return read_corpus(kasztp) if kasztp.is_file() else load_urls(DEFAULT_CORPUS, None)


# Window sizes the layout tests run at: a laptop, and a phone (iPhone 12-14 class, touch).
SIZES = {"desktop": {"viewport": {"width": 1280, "height": 900}},
         "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 3, "is_mobile": True,
                   "has_touch": True}}


@pytest.fixture(params=sorted(SIZES))
def sized_page(request, browser, base_url):
    """A page at each of SIZES (CSP bypassed so axe-core can be injected); its size name is page.size."""
    context = browser.new_context(**SIZES[request.param], base_url=base_url, bypass_csp=True)
    page = context.new_page()
    page.size = request.param
    yield page
    context.close()


@pytest.fixture(scope="session")
def axe_path() -> Path:
    """axe-core's browser bundle, installed by npm as a dev dependency of web_client."""
    path = REPO / "web_client" / "node_modules" / "axe-core" / "axe.min.js"
    if not path.is_file():
        pytest.skip("axe-core is not installed (cd web_client && npm ci)")
    return path


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where tests save screenshots for people to look at (build/ is not committed)."""
    folder = REPO / "build" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
