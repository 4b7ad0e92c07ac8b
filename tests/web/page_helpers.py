"""Helpers shared by the browser tests (and bench/bench_browser.py): open the page, read it."""

from __future__ import annotations

import numpy as np
from playwright.sync_api import expect

from client.protocol import FederatedClient

# Debian's chromium, quiet: no background traffic that would muddle request recording or timing.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ADMIN_TOKEN = "web-test-admin-token-0123456789abcdef"  # the test servers' admin bearer token (>= 32 bytes)
MODEL_READY_MS = 60_000  # first load: 14 MB of ORT wasm plus the bundle, on a busy 2-core box
# Page settings for tests: never train on their own, look for new versions twice a second.
PAGE = "/?train_after_urls=0&poll_ms=500"


def open_page(page, path: str = PAGE):
    """Go to the demo page and wait until its model is loaded."""
    page.goto(path)
    page.wait_for_function("(document.body.dataset.version ?? '') !== ''",
                           timeout=MODEL_READY_MS)
    return page


def shown_suggestions(page, typed: str) -> list[tuple[str, str]]:
    """Fill the URL bar with typed; return what the page suggests for exactly it, as
    (text, source) pairs, source "history" (a visited URL) or "model"."""
    page.evaluate("delete document.getElementById('suggestions').dataset.for")  # forget earlier answers
    page.fill("#url", typed)
    page.wait_for_function("t => document.getElementById('suggestions').dataset.for === t", arg=typed)
    pairs = page.locator("#suggestions [role=option]").evaluate_all(
        "els => els.map(e => [e.dataset.value, e.dataset.source])")
    return [tuple(pair) for pair in pairs]


def suggestions_for(page, typed: str) -> list[str]:
    """The texts of shown_suggestions, history and model alike."""
    return [text for text, _ in shown_suggestions(page, typed)]


def visit(page, url: str) -> None:
    """Clear the URL bar, type a URL key by key, close the suggestions, press Enter; wait until
    it is in the history."""
    count = page.locator("#history li").count()
    page.get_by_role("combobox").fill("")  # earlier text would prefix the URL
    page.get_by_role("combobox").click()
    page.keyboard.type(url)
    page.keyboard.press("Escape")
    page.keyboard.press("Enter")
    expect(page.locator("#history li")).to_have_count(count + 1)


def axe_violations(page, axe_path) -> list[dict]:
    """Run axe-core (from npm) over the page: every rule it runs by default; [] when none fails."""
    page.add_script_tag(path=axe_path)
    return page.evaluate("""async () => (await axe.run()).violations.map(
        (v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" ")) }))""")


def pages_ready_to_train(browser, base_url: str, histories: list[list[str]]) -> tuple[list, list]:
    """(contexts, pages): one fresh browser context per history, its URLs visited, "Train now" enabled.
    Close the contexts when done."""
    contexts = [browser.new_context(base_url=base_url) for _ in histories]
    pages = [open_page(context.new_page()) for context in contexts]
    for page, history in zip(pages, histories, strict=True):
        for url in history:
            visit(page, url)
        expect(page.get_by_role("button", name="Train now")).to_be_enabled()
    return contexts, pages


def publish(app, rounds: int) -> None:
    """rounds versions, each from one client's zero delta closed by the admin."""
    for _ in range(rounds):
        client = FederatedClient(app.test_client())
        client.enroll()
        zeros = {name: np.zeros(t.shape, np.float32) for name, t in client.global_weights().items()}
        client.upload(zeros, client.ticket(), num_examples=4, loss_before=3.1, loss_after=2.7)
        app.test_client().post("/api/admin/close", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


def assert_q8_rounding(values: np.ndarray, scale: np.ndarray, delta: np.ndarray) -> None:
    """values and scale are a Q8 encoding of the float32 delta (formats/update.py's quantise):
    each block's scale is max|x| / 127 bit for bit, each value x / scale rounded down or up."""
    assert values.dtype == np.int8 and values.shape == delta.shape and scale.dtype == np.float32
    block = 64
    flat = np.pad(delta.ravel(), (0, -delta.size % block)).astype(np.float64).reshape(-1, block)
    np.testing.assert_array_equal(scale, (np.abs(flat).max(axis=1) / 127).astype(np.float32))
    exact = (flat / np.where(scale > 0, scale, 1).astype(np.float64)[:, None]).ravel()[:delta.size]
    got = values.ravel().astype(np.float64)
    assert ((got == np.floor(exact)) | (got == np.ceil(exact))).all()
