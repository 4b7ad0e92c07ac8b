"""Offline after the first visit (web_client/sw.js): a service worker keeps the page, its modules
and onnxruntime-web; model_store.js keeps the model. The page reloads, suggests and trains with
the server gone, still cross-origin isolated; a web app manifest makes it installable."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

from page_helpers import open_page, shown_suggestions, visit
from playwright.sync_api import expect

SW_SOURCE = (Path(__file__).resolve().parents[2] / "web_client" / "sw.js").read_text()
SHELL = set(re.findall(r'"(/[^"]*)"', SW_SOURCE[SW_SOURCE.index("const SHELL"):SW_SOURCE.index("];")]))
CONTROLLED = "navigator.serviceWorker.controller !== null"


def test_reload_with_the_server_gone_still_suggests_and_trains(page, context, app_slot, screenshots):
    """Visit once, stop the server and go offline, reload: the page starts from the caches, is
    still cross-origin isolated, suggests the visited URL and the model's, and trains."""
    # Prepare: a first visit, controlled by the service worker once it has installed
    open_page(page)
    page.wait_for_function(CONTROLLED)
    visit(page, "qxdelta.org/garden/roses")
    # the train graph is cached
    expect(page.locator("#train-hint")).to_contain_text("learns from your visits at once")
    # Execute: nothing answers any more
    app_slot.app = None
    context.set_offline(True)
    page.reload()
    # Assert
    expect(page.locator("#model-version")).to_have_text("version 1", timeout=60_000)
    expect(page.locator("#server-status")).to_have_class(re.compile("error"))
    assert page.evaluate("crossOriginIsolated"), "cached responses must keep COOP/COEP"
    assert page.evaluate(CONTROLLED)
    shown = shown_suggestions(page, "qxd")
    assert shown[0] == ("qxdelta.org/garden/roses", "history") and len(shown) == 5
    assert all(source == "model" for _, source in shown[1:])
    page.get_by_role("button", name="Got it, hide this").click()
    page.get_by_role("button", name="Train now").click()
    expect(page.locator("#server-answer")).to_contain_text("kept on this device", timeout=120_000)
    page.screenshot(path=screenshots / "page-desktop-offline.png", full_page=True)
    context.set_offline(False)


def test_service_worker_keeps_every_file_a_page_load_needs(page, context):
    """Every page module, stylesheet and ORT script the page and its workers request is in the
    service worker's SHELL (the wasm and model files are model_store.js's)."""
    paths = set()
    context.on("request", lambda r: paths.add(urlparse(r.url).path))
    open_page(page)
    expect(page.locator("#train-hint")).to_contain_text("needs at least one visit")
    needed = {p for p in paths if p.startswith(("/static/", "/ort/")) and not p.endswith(".wasm")}
    assert needed and needed - SHELL == set()
    assert {"/", "/favicon.ico", "/static/manifest.webmanifest"} <= SHELL


def test_installable_web_app_with_a_service_worker_for_the_whole_site(page, base_url):
    """The page links a manifest with a name, start URL, standalone display and an icon that is
    served; the worker is served at /sw.js and its scope is the whole site; /favicon.ico is an icon."""
    open_page(page)
    href = page.locator("link[rel=manifest]").get_attribute("href")
    manifest = json.loads(page.request.get(href).text())
    assert manifest["start_url"] == "/" and manifest["display"] == "standalone" and manifest["short_name"]
    for icon in manifest["icons"]:
        assert page.request.get(icon["src"]).headers["content-type"].startswith(icon["type"])
    assert page.evaluate("navigator.serviceWorker.ready.then((r) => r.scope)") == f"{base_url}/"
    favicon = page.request.get("/favicon.ico")
    assert favicon.ok and favicon.headers["content-type"].startswith("image/svg+xml")
