"""The page as a federated client (web_client/client.js): rounds, privacy, failures, history."""

from __future__ import annotations

import base64
import re
from urllib.parse import parse_qs, quote, quote_plus, urlparse

import numpy as np
import pytest
from page_helpers import (
    ADMIN_TOKEN,
    PAGE,
    assert_q8_rounding,
    open_page,
    publish,
    shown_suggestions,
    suggestions_for,
    visit,
)
from playwright.sync_api import expect

from client.protocol import FederatedClient
from formats import tensors as tensor_codec
from formats.update import dequantise
from formats.urls import normalize_url
from runtime.ngram import PersonalCompleter, open_completer
from server.app import create_app
from tests.server.test_cohorts import At

TRAINING_MS = 120_000  # a few train_step runs, three browsers on two cores
PERSONAL_HISTORIES = [  # one per browser: what each user typed and visited
    ["qxalpha.org/recipes/soup", "qxalpha.org/recipes/bread", "qxalpha.org/blog", "qxalpha.org/recipes/cake"],
    ["qxbeta.net/docs/start", "qxbeta.net/docs/api", "qxbeta.net/docs/faq", "qxbeta.net/pricing"],
    ["qxgamma.com/shop/shoes", "qxgamma.com/shop/hats", "qxgamma.com/cart", "qxgamma.com/shop/socks"],
]
PROBES = ["qx", "qxa", "qxb", "qxg", "qxalpha.org/", "qxbeta.net/d", "qxgamma.com/s"]
HISTORY_SUGGESTIONS = 2  # web_client/constants.js
# One float32 addition to a weight of magnitude w: 2^-24 w, doubled for slack.
F32_RELATIVE = 2.0 ** -23
# The update kept in IndexedDB (float32, before any upload conversion), as base64 safetensors.
PENDING_UPDATE = """async () => {
  const { History } = await import("/static/history.js");
  const { encode } = await import("/static/safetensors.js");
  const bytes = encode((await (await History.open()).getPending()).delta);
  const url = await new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.readAsDataURL(new Blob([bytes]));
  });
  return url.slice(url.indexOf(",") + 1);
}"""


def train_and_wait(page, expected_answer: str) -> None:
    """Press Train now and wait for the server's answer (or the failure) to be shown."""
    page.get_by_role("button", name="Train now").click()
    expect(page.locator("#server-answer")).to_contain_text(expected_answer, timeout=TRAINING_MS)


def server_model(app) -> tuple[dict, dict]:
    """The server's /api/model document and its global weights, read through its own API."""
    client = app.test_client()
    info = client.get("/api/model").get_json()
    with client.get(info["files"]["weights.safetensors"]) as response:
        tensors, _ = tensor_codec.decode(response.data)
    return info, tensors


def downloads_expected(v1_files: dict, v2_files: dict) -> list[str]:
    """Each file once: version 1's graphs, tokenizer, weights and counts, then only version 2's weights
    (version 2 links version 1's counts.bin: the same URL, never fetched again)."""
    browser_files = ("infer.onnx", "tokenizer.json", "weights.safetensors", "train_step.onnx", "counts.bin")
    return sorted([v1_files[name] for name in browser_files] + [v2_files["weights.safetensors"]])


def expected_suggestions(history: list[str], probe: str, model: list[str]) -> list[tuple[str, str]]:
    """What a page whose user visited `history` (canonical URLs, each once, in order) shows for a
    canonical probe: the newest visits extending it, then the model's suggestions not among them."""
    extending = [url for url in reversed(history) if url.startswith(probe) and url != probe]
    visited = extending[:HISTORY_SUGGESTIONS]
    rest = [text for text in model if text not in visited]
    return ([(url, "history") for url in visited] + [(text, "model") for text in rest])[:5]


def test_full_round_in_three_browsers_updates_every_page(browser, base_url, live_app, bundle_dir):
    """Three browsers with their own histories train and upload Q8 deltas; the server aggregates;
    every page swaps in version 2 without a reload, fetching only the new weights, and then shows
    its own visited URLs followed by what the Python completer suggests with the new weights."""
    # Prepare
    contexts = [browser.new_context(base_url=base_url) for _ in PERSONAL_HISTORIES]
    fetched = [[] for _ in contexts]  # bundle files each browser downloaded
    uploads = []  # bodies of every POST /api/updates
    for context, seen in zip(contexts, fetched, strict=True):
        context.on("request", lambda r, seen=seen: "/api/files/" in r.url
                   and seen.append(urlparse(r.url).path))
        context.on("request", lambda r: urlparse(r.url).path == "/api/updates"
                   and uploads.append(r.post_data_buffer))
    pages = [open_page(context.new_page()) for context in contexts]
    v1_files = server_model(live_app)[0]["files"]
    before = {probe: suggestions_for(pages[0], probe) for probe in PROBES}
    for page, history in zip(pages, PERSONAL_HISTORIES, strict=True):
        for url in history:
            visit(page, url)
        page.evaluate("window.sameDocument = true")
    # Execute
    for page in pages:
        train_and_wait(page, "accepted")
    # Assert
    for page in pages:
        expect(page.locator("#model-version")).to_have_text("version 2", timeout=TRAINING_MS)
        expect(page.locator("#contributions")).to_have_text("1")
        assert page.evaluate("window.sameDocument === true"), "the model was swapped without a reload"
    info, new_weights = server_model(live_app)
    completer = open_completer(bundle_dir, weights=new_weights)
    expected = {probe: completer.complete(probe, k=5) for probe in PROBES}
    for page, history in zip(pages, PERSONAL_HISTORIES, strict=True):
        personal = PersonalCompleter(completer, history)  # the page mixes in its own visits' n-gram
        for probe in PROBES:
            wanted = expected_suggestions(history, probe, personal.complete(probe, k=5))
            assert shown_suggestions(page, probe) == wanted, probe
    assert info["version"] == 2 and expected != before, "the aggregated model should suggest differently"
    for seen in fetched:
        assert sorted(seen) == downloads_expected(v1_files, info["files"])
    parameters = sum(int(np.prod(p["shape"])) for p in info["manifest"]["parameters"])
    assert len(uploads) == 3
    assert all(len(body) < parameters * (1 + 4 / 64) + 4096 for body in uploads), "Q8: 1.06 bytes a value"
    assert all(t.dtype == (np.float32 if n.endswith("#scale") else np.int8)
               for body in uploads for n, t in tensor_codec.decode(body)[0].items())
    for context in contexts:
        context.close()


def test_the_personal_ngram_offers_no_single_character(page, bundle_dir):
    """After a visit to qxdelta.org/abc/def, typing qxdelta.org/ab the visits' n-gram proposes the
    segment qxdelta.org/abc: one character that saves no key. The page leaves it out, as Python's
    PersonalCompleter does, and shows its history and the model's suggestions as before."""
    # Prepare
    history, probe = ["qxdelta.org/abc/def"], "qxdelta.org/ab"
    open_page(page)
    visit(page, history[0])
    wanted = expected_suggestions(history, probe, PersonalCompleter(open_completer(bundle_dir), history)
                                  .complete(probe, k=5))
    # Execute
    shown = shown_suggestions(page, probe)
    # Assert
    assert "qxdelta.org/abc" not in [text for text, _ in shown]
    assert shown == wanted and ("qxdelta.org/abc/def", "history") in shown


def leak_forms(text: str) -> set[str]:
    """How a string could appear in a request: plain, percent-encoded, or inside base64."""
    forms = {text, quote(text, safe=""), quote(text), quote_plus(text), quote(text, safe="/:")}
    for pad in range(3):  # base64 of text at each alignment inside a longer message
        encoded = base64.b64encode(b"\0" * pad + text.encode())
        core = encoded[4 if pad else 0:len(encoded) - 4].decode()
        forms |= {core, core.replace("+", "-").replace("/", "_")}
    return {form for form in forms if len(form) >= 8}


def test_no_typed_url_leaves_the_browser(page, context):
    """Record every request while typing, visiting, training and uploading: none carries a typed
    URL (or its canonical form) in its URL, headers or body, in any usual encoding."""
    # Prepare
    requests = []
    context.on("request", lambda request: requests.append(request))
    typed = ["https://secret-clinic.example/patients/4242", "my-bank-portal.example/account?id=987654",
             "private-diary.example/2026/entry-about-me"]
    # Execute
    open_page(page)
    for url in typed:
        visit(page, url)
    page.get_by_role("combobox").click()
    page.keyboard.type("secret-cl")
    page.wait_for_function("document.getElementById('suggestions').dataset.for === 'secret-cl'")
    expect(page.get_by_role("option").first).to_have_accessible_name(
        "secret-clinic.example/patients/4242, from your history")  # history suggestions are on
    train_and_wait(page, "accepted")
    # Assert
    secrets = set().union(*(leak_forms(t) | leak_forms(normalize_url(t)) for t in typed))
    paths = {urlparse(r.url).path for r in requests}
    assert {"/api/tickets", "/api/updates", "/ort/ort-wasm-simd-threaded.wasm"} <= paths, \
        "the recorder must see the uploads and the workers' own requests"
    for request in requests:
        headers = "\n".join(f"{k}: {v}" for k, v in request.all_headers().items())
        body = (request.post_data_buffer or b"").decode("latin-1")
        for where in (request.url, headers, body):
            leaked = [s for s in secrets if s in where]
            assert not leaked, f"{request.method} {request.url} carries {leaked}"


def test_server_down_keeps_history_and_update_for_a_retry(page, context):
    """With the API unreachable, training still runs; the page says the update was not sent,
    keeps it (even across a reload) with the history, and a retry later delivers it."""
    open_page(page)
    for url in PERSONAL_HISTORIES[0][:2]:
        visit(page, url)
    expect(page.get_by_role("button", name="Train now")).to_be_enabled()  # training graph cached
    context.route("**/api/**", lambda route: route.abort("connectionrefused"))
    train_and_wait(page, "cannot be reached")
    expect(page.locator("#server-answer")).to_contain_text("kept on this device")
    page.reload()
    expect(page.locator("#model-version")).to_have_text("version 1", timeout=60_000)  # started from the cache
    expect(page.get_by_role("button", name="Retry upload")).to_be_visible()
    expect(page.locator("#history li")).to_have_count(2)
    context.unroute("**/api/**")  # the page sends the kept update by itself
    expect(page.locator("#server-answer")).to_contain_text("accepted")
    expect(page.get_by_role("button", name="Retry upload")).to_be_hidden()
    expect(page.locator("#contributions")).to_have_text("1")


@pytest.mark.parametrize("float16", [True, False], ids=["Float16Array", "no-Float16Array"])
def test_upload_is_q8_and_aggregates_to_what_it_decodes(page, context, live_app, float16):
    """The delta goes up as Q8 (a quarter of F32) in every browser, Float16Array or not: each value
    the local float32 delta over its block's scale, rounded down or up; once the server aggregates
    it, the global weights moved by exactly the decoded delta, to within float32 addition."""
    # Prepare: train offline, so the float32 delta waits in IndexedDB where the test can read it
    if not float16:
        page.add_init_script("delete globalThis.Float16Array")
    open_page(page)
    visit(page, PERSONAL_HISTORIES[1][0])
    expect(page.get_by_role("button", name="Train now")).to_be_enabled()
    context.route("**/api/**", lambda route: route.abort("connectionrefused"))
    train_and_wait(page, "kept on this device")
    local, _ = tensor_codec.decode(base64.b64decode(page.evaluate(PENDING_UPDATE)))
    v1 = server_model(live_app)[1]
    bodies = []
    context.on("request", lambda r: urlparse(r.url).path == "/api/updates"
               and bodies.append(r.post_data_buffer))
    # Execute: the page sends the kept update by itself once the API answers
    context.unroute("**/api/**")
    expect(page.locator("#server-answer")).to_contain_text("accepted")
    live_app.test_client().post("/api/admin/close", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    # Assert
    sent, _ = tensor_codec.decode(bodies[0])
    v2 = server_model(live_app)[1]
    assert list(sent) == [n + suffix for n in local for suffix in ("", "#scale")]
    for name, delta in local.items():
        assert_q8_rounding(sent[name], sent[name + "#scale"], delta)
        decoded = dequantise(sent[name], sent[name + "#scale"]).astype(np.float64)
        moved = v2[name].astype(np.float64) - v1[name]
        assert (np.abs(moved - decoded) <= F32_RELATIVE * (np.abs(v1[name]) + np.abs(decoded))).all(), name
    assert sum(np.count_nonzero(d) for d in local.values()) > 0, "training should move the weights"


@pytest.mark.parametrize("versions_on", [1, 2])
def test_offline_update_is_sent_while_its_version_is_recent_enough_else_discarded(page, context, live_app,
                                                                                   versions_on):
    """An update trained offline on version 1 asks for a version-1 ticket once the server is back:
    one version on (MAX_STALENESS 1), it is accepted (before: discarded, since tickets were for the
    current version only); two on, the server refuses it stale and the page drops it instead of
    retrying forever."""
    # Prepare: train while the server is unreachable
    open_page(page)
    visit(page, PERSONAL_HISTORIES[2][0])
    expect(page.get_by_role("button", name="Train now")).to_be_enabled()
    context.route("**/api/**", lambda route: route.abort("connectionrefused"))
    train_and_wait(page, "kept on this device")
    # Execute: meanwhile other clients' updates close rounds; then the page retries
    publish(live_app, versions_on)
    context.unroute("**/api/**")  # the page retries by itself
    # Assert
    if versions_on == 1:
        expect(page.locator("#server-answer")).to_contain_text("accepted")
        expect(page.locator("#contributions")).to_have_text("1")
    else:
        expect(page.locator("#server-answer")).to_contain_text("Update discarded: base_version 1 is too old")
        expect(page.get_by_role("button", name="Retry upload")).to_be_hidden()
        expect(page.locator("#contributions")).to_have_text("0")


def test_refused_update_shows_the_servers_message_and_is_kept(page, live_app):
    """A 4xx refusal shows the server's own message; the update is kept and a retry succeeds
    once the server accepts it."""
    open_page(page)
    visit(page, PERSONAL_HISTORIES[1][0])
    live_app.config["MAX_UPDATE_NORM"] = 1e-9
    train_and_wait(page, "Update not sent")
    expect(page.locator("#server-answer")).to_contain_text("norm")
    expect(page.get_by_role("button", name="Retry upload")).to_be_visible()
    live_app.config["MAX_UPDATE_NORM"] = 50.0
    page.get_by_role("button", name="Retry upload").click()
    expect(page.locator("#server-answer")).to_contain_text("accepted")
    expect(page.locator("#contributions")).to_have_text("1")


def test_an_update_refused_network_full_waits_for_the_next_version(page, app_slot, server_config, tmp_path):
    """FedBuff, one seat per network: a neighbour behind the same address (127.0.0.1) holds the
    buffer's seat, so the page's upload is 429 network_full. The page keeps the update and its
    unused ticket, sends nothing while the version stays, and once two clients on other networks
    make the step it sends it again by itself: accepted, one version stale."""
    # Prepare
    app = create_app({**server_config, "DATA_DIR": str(tmp_path / "buffered"), "SCHEDULE": "buffered",
                      "MAX_MEMBERS_PER_NETWORK": 1})
    app_slot.app = app
    web = app.test_client()
    feds = [FederatedClient(web), *(FederatedClient(At(web, f"198.51.{i}.7")) for i in range(2))]
    for fed in feds:
        fed.enroll()
    zeros = {name: np.zeros(tensor.shape, np.float32) for name, tensor in feds[0].global_weights().items()}
    feds[0].upload(zeros, feds[0].ticket(), num_examples=1, loss_before=1.0, loss_after=1.0)
    open_page(page)
    visit(page, PERSONAL_HISTORIES[0][0])
    uploads: list[str] = []
    page.on("request", lambda r: urlparse(r.url).path == "/api/updates" and uploads.append(r.url))
    # Execute: refused, then a few polls of an unchanged version
    train_and_wait(page, "Update not sent yet")
    page.wait_for_timeout(3000)
    waited = (len(uploads), page.locator("#contributions").inner_text())
    for fed in feds[1:]:
        fed.upload(zeros, fed.ticket(), num_examples=1, loss_before=1.0, loss_after=1.0)
    # Assert
    assert waited == (1, "0")
    expect(page.locator("#server-answer")).to_contain_text("accepted", timeout=30_000)
    expect(page.locator("#contributions")).to_have_text("1")
    assert len(uploads) == 2
    rounds = FederatedClient(web).status()["rounds"]
    assert [r["participants"] for r in rounds[:2]] == [3, 1] and rounds[1]["mean_staleness"] == 1.0


def test_tampered_model_file_is_refused(page, context):
    """Weights whose bytes do not match the manifest's sha256 are never loaded."""
    context.route("**/api/files/*", lambda route: route.fulfill(body=b"tampered", status=200))
    page.goto(PAGE)
    expect(page.locator("#server-status")).to_contain_text("corrupt", timeout=60_000)
    expect(page.locator("#model-version")).to_have_text("–")


def test_history_is_listed_deleted_and_cleared_and_persists(page):
    """Visits are listed newest first, survive a reload, and can be deleted one by one or all."""
    open_page(page)
    for url in ("first.example", "second.example/a", "third.example/b"):
        visit(page, url)
    urls = page.locator("#history .history-url")
    expect(urls).to_have_text(["third.example/b", "second.example/a", "first.example"])
    page.get_by_role("button", name="Delete second.example/a from the local history").click()
    expect(urls).to_have_text(["third.example/b", "first.example"])
    page.reload()
    expect(urls).to_have_text(["third.example/b", "first.example"])
    page.get_by_role("button", name="Clear all").click()
    expect(urls).to_have_count(0)
    expect(page.locator("#local-urls")).to_contain_text("0")
    page.reload()
    expect(page.locator("#local-urls")).to_contain_text("0")
    expect(urls).to_have_count(0)


def test_suggestions_keep_coming_while_training(page):
    """Training runs in its own worker: typing gets suggestions mid-training, while the progress
    bar and the live loss move."""
    open_page(page, "/?train_after_urls=0&poll_ms=500&epochs=40")
    for url in PERSONAL_HISTORIES[2]:
        visit(page, url)
    page.get_by_role("button", name="Train now").click()
    page.wait_for_function("document.body.dataset.training === 'true'"
                           " && document.getElementById('train-progress').value > 0")
    answers = [suggestions_for(page, typed) for typed in ("qxg", "goo", "wiki")]
    assert page.evaluate("document.body.dataset.training") == "true", "training should still be running"
    assert all(len(answer) == 5 for answer in answers)
    expect(page.locator("#train-status")).to_contain_text("loss")
    assert 0 < page.locator("#train-progress").evaluate("bar => bar.value") < 1


@pytest.mark.parametrize("cores, setting, training_threads", [
    (8, "", "2"), (1, "", "1"), (8, "&train_threads=1", "1"), (8, "&train_threads=2.7", "2"),
    (8, "&train_threads=0", "default")])
def test_the_training_worker_asks_for_train_threads_at_most_the_cores(browser, base_url, cores, setting,
                                                                       training_threads):
    """train_threads (default 2; whole, at most the device's cores) is the training worker's
    onnxruntime-web threads (?threads= on its URL, as bench_browser.py times it); the completion
    worker keeps the default, one."""
    cores_js = f"Object.defineProperty(navigator, 'hardwareConcurrency', {{get: () => {cores}}})"
    context = browser.new_context(base_url=base_url)
    try:
        context.add_init_script(cores_js)
        page = open_page(context.new_page(), PAGE + setting)
        threads = sorted(parse_qs(urlparse(worker.url).query).get("threads", ["default"])[0]
                         for worker in page.workers if urlparse(worker.url).path.endswith("/worker.js"))
    finally:
        context.close()
    assert threads == sorted([training_threads, "default"])


def test_enough_new_urls_start_training_by_themselves(page):
    """With train_after_urls=3 (and no idle wait), the third visit trains, uploads and shows both losses."""
    open_page(page, "/?train_after_urls=3&train_idle_ms=0&poll_ms=500")
    for url in PERSONAL_HISTORIES[0][:3]:
        visit(page, url)
    expect(page.locator("#server-answer")).to_contain_text("accepted", timeout=TRAINING_MS)
    expect(page.locator("#local-urls")).to_have_text("3 (0 not yet trained on)")
    expect(page.locator("#local-loss")).to_have_text(re.compile(r"^\d+\.\d{3} → \d+\.\d{3}$"))
    expect(page.locator("#contributions")).to_have_text("1")


def test_training_uses_only_the_most_recent_visits(page):
    """max_train_urls bounds a run: with 2, three visits train on two URLs, and all count as trained."""
    open_page(page, "/?train_after_urls=0&poll_ms=500&max_train_urls=2")
    for url in PERSONAL_HISTORIES[0][:3]:
        visit(page, url)
    is_upload = lambda request: request.url.endswith("/api/updates")  # noqa: E731
    with page.expect_request(is_upload, timeout=TRAINING_MS) as upload:
        page.get_by_role("button", name="Train now").click()
    _, metadata = tensor_codec.decode(upload.value.post_data_buffer)
    assert metadata["num_examples"] == "2"
    expect(page.locator("#local-urls")).to_have_text("3 (0 not yet trained on)")
