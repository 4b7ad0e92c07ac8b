"""web_client/secagg.js against privacy/: the same bytes both ways, then one round of both.

Vectors made in Python are checked in chromium and vectors made in chromium in Python; a mixed
cohort (JS clients in three browser contexts, the rest Python) is unmasked by the Python server.
The module loads from the app's /static/ on a blank page of its origin (a secure context, which
WebCrypto's subtle API needs).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from privacy import ddg, graph, quantize, shamir
from privacy.messages import RoundConfig
from privacy.primitives import KeyPair, agree, decrypt, encrypt, hkdf, prg_bytes, prg_words
from privacy.secagg import ProtocolError, SecAggClient, SecAggServer, make_config
from tests.privacy.ddg_support import chi_square_pvalue, variance
from tests.privacy.secagg_support import RFC7748

# The page imports the module and leaves it, and hex helpers, on window.
BOOT = """async () => {
  window.sa = await import('/static/secagg.js');
  window.shamir = await import('/static/vendor/shamir-secret-sharing/index.js');
  window.unhex = (h) => Uint8Array.from(h.match(/../g) || [], (x) => parseInt(x, 16));
  window.hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  window.clients = {};
}"""


@pytest.fixture
def sa_page(module_page):
    """One page with the module loaded."""
    module_page.evaluate(BOOT)
    return module_page


def open_secagg_page(context, base_url: str):
    """A blank page of the app's origin in context, with secagg.js loaded as window.sa."""
    page = context.new_page()
    page.route("**/blank-test-page", lambda route: route.fulfill(
        status=200, content_type="text/html", body="<!doctype html><title>secagg tests</title>"))
    page.goto(base_url + "/blank-test-page")
    page.evaluate(BOOT)
    return page

SEED = bytes(range(100, 132))


def test_primitives_give_the_same_bytes(sa_page):
    got = sa_page.evaluate("""async ([v, seed]) => {
      const u = unhex;
      return {
        alicePk: hex(await sa.publicOf(u(v.alice_sk))),
        agreed: hex(await sa.agree(u(v.alice_sk), u(v.bob_pk), 'mask', 5)),
        hkdfs: await Promise.all([['mask', 0], ['enc', 7], ['graph', 2 ** 40 + 3]].map(
          async ([label, r]) => hex(await sa.hkdf(seed.length ? u(seed) : null, label, r)))),
        aesZero: hex(await sa.prgBytes(new Uint8Array(32), 16)),
        words16: Array.from(await sa.prgWords(u(seed), 1000, 2)),
        words32: Array.from(await sa.prgWords(u(seed), 1000, 4)),
        sealed: hex(await sa.encrypt(u(seed), u('00010203'), u('aabb'), u('0102030405060708090a0b0c'))),
      };
    }""", [RFC7748, SEED.hex()])
    assert got["alicePk"] == RFC7748["alice_pk"]
    assert got["agreed"] == agree(bytes.fromhex(RFC7748["bob_sk"]), bytes.fromhex(RFC7748["alice_pk"]),
                                  "mask", 5).hex()
    labels = (("mask", 0), ("enc", 7), ("graph", 2**40 + 3))
    assert got["hkdfs"] == [hkdf(SEED, label, r).hex() for label, r in labels]
    assert got["aesZero"] == prg_bytes(bytes(32), 16).hex() == "dc95c078a2408989ad48a21492842087"
    assert got["words16"] == prg_words(SEED, 1000, 2).tolist()
    assert got["words32"] == prg_words(SEED, 1000, 4).tolist()
    assert got["sealed"] == encrypt(SEED, bytes([0, 1, 2, 3]), bytes([0xAA, 0xBB]), bytes(range(1, 13))).hex()


def test_encryption_and_key_agreement_both_ways(sa_page):
    python_keys = KeyPair.generate()
    blob = encrypt(SEED, b"from python", b"aad")
    got = sa_page.evaluate("""async ([seed, blob, pyPk]) => {
      const kp = await sa.generateKeyPair();
      const text = (s) => new TextEncoder().encode(s);
      return {
        opened: new TextDecoder().decode(await sa.decrypt(unhex(seed), unhex(blob), text('aad'))),
        sealed: hex(await sa.encrypt(unhex(seed), text('from js'), text('x'))),
        sk: hex(kp.privateRaw), pk: hex(kp.publicRaw),
        agreed: hex(await sa.agree(kp.key, unhex(pyPk), 'enc', 99)),
      };
    }""", [SEED.hex(), blob.hex(), python_keys.public.hex()])
    assert got["opened"] == "from python"
    assert decrypt(SEED, bytes.fromhex(got["sealed"]), b"x") == b"from js"
    # the JS private key, exported raw, is the key Python derives the same public key and seed from
    assert KeyPair.from_private(bytes.fromhex(got["sk"])).public.hex() == got["pk"]
    assert agree(python_keys.private, bytes.fromhex(got["pk"]), "enc", 99).hex() == got["agreed"]


@pytest.mark.parametrize("n,k,round_id", [(10, 9, 1), (40, 10, 3), (100, 22, 7), (257, 30, 2**33)])
def test_neighbour_graph_is_the_same(sa_page, n, k, round_id):
    got = sa_page.evaluate("async ([seed, n, k, r]) => sa.neighbourGraph(unhex(seed), r, n, k)",
                           [SEED.hex(), n, k, round_id])
    assert got == graph.neighbours(SEED, round_id, n, k)


def test_shamir_shares_cross_both_ways(sa_page):
    secret = bytes(range(7, 39))
    python_shares = shamir.split(secret, 9, 6)
    got = sa_page.evaluate("""async ([secret, pyShares]) => ({
      combined: hex(await shamir.combine(pyShares.slice(2, 8).map(unhex))),
      jsShares: (await shamir.split(unhex(secret), 9, 6)).map(hex),
    })""", [secret.hex(), [s.hex() for s in python_shares]])
    assert got["combined"] == secret.hex()
    js_shares = [bytes.fromhex(s) for s in got["jsShares"]]
    assert shamir.combine(js_shares[:6]) == shamir.combine(js_shares[3:]) == secret
    assert shamir.combine(js_shares[:5]) != secret


def test_config_decodes_in_js(sa_page):
    config = make_config(round_id=2**40 + 1, cohort_size=12, num_params=777, bits=20, clip=0.75,
                         noise_multiplier=0.5)
    got = sa_page.evaluate("""(data) => { const c = sa.decodeConfig(unhex(data));
      return {...c, roundId: c.roundId.toString(), graphSeed: hex(c.graphSeed)}; }""", config.encode().hex())
    assert got == {"roundId": str(config.round_id), "cohortSize": 12, "degree": config.degree,
                   "threshold": config.threshold, "minSurvivors": config.min_survivors, "bits": 20,
                   "width": 4, "numParams": 777, "scale": config.scale, "clip": 0.75,
                   "noiseStd": config.noise_std,
                   "graphSeed": config.graph_seed.hex()}
    small = RoundConfig(**{**config.__dict__, "cohort_size": 2, "min_survivors": 2})
    with pytest.raises(Exception, match="at least 3"):
        sa_page.evaluate("(data) => sa.decodeConfig(unhex(data))", small.encode().hex())
    weak = RoundConfig(**{**config.__dict__, "threshold": config.degree // 2})  # b and s_sk both rebuildable
    with pytest.raises(Exception, match="threshold"):
        sa_page.evaluate("(data) => sa.decodeConfig(unhex(data))", weak.encode().hex())
    for noise in (float("nan"), -1.0, 2.0**32):  # NaN > 0 is false: a NaN noise std would add none
        unsafe = RoundConfig(**{**config.__dict__, "noise_std": noise})
        with pytest.raises(Exception, match="noise std"):
            sa_page.evaluate("(data) => sa.decodeConfig(unhex(data))", unsafe.encode().hex())
        with pytest.raises(ProtocolError, match="noise_std"):
            SecAggClient(unsafe, 0)


def test_module_runs_in_a_web_worker(sa_page):
    """The page's client code runs in a module worker, where import maps do not reach."""
    got = sa_page.evaluate("""() => new Promise((resolve) => {
      const code = `import * as sa from '${location.origin}/static/secagg.js';
        import { split } from '${location.origin}/static/vendor/shamir-secret-sharing/index.js';
        const kp = await sa.generateKeyPair();
        const shares = await split(kp.privateRaw, 3, 2);
        const words = await sa.prgWords(new Uint8Array(32), 4, 4);
        postMessage({shares: shares.length, words: Array.from(words)});`;
      const url = URL.createObjectURL(new Blob([code], {type: 'text/javascript'}));
      const worker = new Worker(url, {type: 'module'});
      worker.onmessage = (e) => resolve(e.data);
      worker.onerror = (e) => resolve({error: String(e.message)});
    })""")
    assert got == {"shares": 3, "words": prg_words(bytes(32), 4, 4).tolist()}


@pytest.mark.parametrize("sigma", [0.8, 1.5, 40.0])
def test_js_noise_is_the_discrete_gaussian_like_pythons(sa_page, sigma):
    """encodeInput of a zero delta is the client's noise share alone: it passes the chi-square test
    against the exact PMF that the Python sampler passes (tests/privacy/test_ddg.py), and the two
    samples agree with each other. On the old Math.round(Box-Muller) share it fails at sigma ~ 1."""
    count = 200_000
    js = np.array(sa_page.evaluate("""([sigma, count]) => Array.from(
      sa.encodeInput(new Float64Array(count), 1, 1000, sigma), (w) => (w >= 2 ** 31 ? w - 2 ** 32 : w))""",
                                   [sigma, count]), dtype=np.int64)
    python = ddg.discrete_gaussian(sigma, count)
    assert chi_square_pvalue(js, sigma) > 1e-4
    assert chi_square_pvalue(python, sigma) > 1e-4
    assert js.var() == pytest.approx(variance(sigma), rel=0.02)  # sigma^2 + 1/12 for the old share
    low, high = int(-4 * sigma) - 1, int(4 * sigma) + 1
    table = [np.bincount(np.clip(x, low, high) - low, minlength=high - low + 1) for x in (js, python)]
    table = np.array(table)[:, np.array(table).sum(axis=0) > 0]
    assert stats.chi2_contingency(table).pvalue > 1e-4


def test_js_conditional_rounding_never_exceeds_the_norm_bound(sa_page):
    """The delta of tests/privacy's halfway test (plain rounding exceeds the bound about one run in
    six): the JS input never does, and its bound is Python's double, bit for bit."""
    d, scale = 100, 1000.0
    delta = (np.arange(d) % 7 + 40.5) / scale
    clip = float(np.linalg.norm(delta)) * (1 + 1e-12)
    got = sa_page.evaluate("""([delta, clip, scale, cases]) => ({
      norms: Array.from({ length: 300 }, () => Math.sqrt(Array.from(sa.encodeInput(delta, clip, scale),
        (w) => (w >= 2 ** 31 ? w - 2 ** 32 : w)).reduce((s, q) => s + q * q, 0))),
      bounds: cases.map(([c, s, n]) => sa.normBound(c, s, n)),
    })""", [delta.tolist(), clip, scale, [[clip, scale, d], [1.0, 885.37, 690_688], [0.3, 1e7, 3]]])
    bound = quantize.norm_bound(clip, scale, d)
    assert max(got["norms"]) <= bound
    assert got["bounds"] == [quantize.norm_bound(clip, scale, d), quantize.norm_bound(1.0, 885.37, 690_688),
                             quantize.norm_bound(0.3, 1e7, 3)]


def test_js_bernoulli_decides_a_tie_on_the_next_digits(sa_page):
    got = sa_page.evaluate("""() => {
      const scripted = (draws) => ({ draw53: () => draws.shift() });
      const p = 0.3;
      const digit = Math.floor(p * 2 ** 53);
      const next = Math.floor((p * 2 ** 53 - digit) * 2 ** 53);
      return [sa.bernoulli(p, scripted([digit - 1])), sa.bernoulli(p, scripted([digit + 1])),
              sa.bernoulli(p, scripted([digit, next - 1])), sa.bernoulli(p, scripted([digit, next + 1])),
              sa.bernoulli(1, scripted([2 ** 53 - 1])), sa.bernoulli(0, scripted([0]))];
    }""")
    assert got == [True, False, True, False, True, False]


@pytest.mark.parametrize("bits", [16, 24])
def test_mixed_round_js_and_python_clients(browser, base_url, bits):
    """10 clients: 4 in chromium (3 contexts), 6 in Python. Client 6 (Python) drops before sharing
    keys, 3 (JS) after its masked input, 8 (Python) before its masked input; the Python server
    unmasks, and the mean equals the plain mean of the 8 included deltas."""
    n, d = 10, 3000
    config = make_config(round_id=77, cohort_size=n, num_params=d, bits=bits, clip=1.0)
    rng = np.random.default_rng(9)
    deltas = [rng.normal(0, 0.02, d) * (rng.random(d) > 0.8) for _ in range(n)]
    js_home = {0: 0, 3: 1, 5: 2, 9: 2}  # client -> context
    contexts = [browser.new_context() for _ in range(3)]
    pages = [open_secagg_page(context, base_url) for context in contexts]
    try:
        def js(index, code, *args):
            return pages[js_home[index]].evaluate(code, [index, *args])

        python = {i: SecAggClient(config, i, np.random.default_rng(i)) for i in range(n) if i not in js_home}
        for i in js_home:
            js(i, "async ([i, c]) => { clients[i] = await sa.SecAggClient.create(unhex(c), i); }",
               config.encode().hex())
        server = SecAggServer(config)
        for i in range(n):
            message = python[i].advertise() if i in python else bytes.fromhex(
                js(i, "([i]) => hex(clients[i].advertise())"))
            server.receive_advertise(message)
        roster = server.roster()
        for i in sorted(set(range(n)) - {6}):
            message = python[i].share_keys(roster) if i in python else bytes.fromhex(
                js(i, "async ([i, r]) => hex(await clients[i].shareKeys(unhex(r)))", roster.hex()))
            server.receive_shares(message)
        server.close_shares()
        for i in sorted(set(range(n)) - {6, 8}):
            routed = server.shares_for(i)
            message = python[i].masked_input(routed, deltas[i]) if i in python else bytes.fromhex(js(
                i, "async ([i, s, delta]) => hex(await clients[i].maskedInput(unhex(s), delta))",
                routed.hex(), deltas[i].tolist()))
            server.receive_masked_input(message)
        request = server.unmask_request()
        for i in sorted(set(range(n)) - {6, 8, 3}):
            message = python[i].unmask(request) if i in python else bytes.fromhex(
                js(i, "([i, r]) => hex(clients[i].unmask(unhex(r)))", request.hex()))
            server.receive_unmask(message)
        aggregate = server.finish()
    finally:
        for context in contexts:
            context.close()
    included = [0, 1, 2, 3, 4, 5, 7, 9]
    assert aggregate.survivors == included and aggregate.dropped == [8]
    plain = np.mean([quantize.clip(deltas[i], config.clip) for i in included], axis=0)
    assert np.abs(aggregate.mean(config) - plain).max() < quantize.error_bound(config.scale)
