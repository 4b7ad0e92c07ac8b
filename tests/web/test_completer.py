"""The page's suggestions are Python's, prefix for prefix: runtime.complete.Completer's network,
fused with the bundle's counts.bin as runtime.ngram.open_completer does (the threshold tests
compare the network alone)."""

from __future__ import annotations

import json
import math
import random
import re

import numpy as np
from page_helpers import open_page, suggestions_for

import runtime.complete
from formats.urls import split_typed
from runtime.complete import Completer, enough, junk
from runtime.ngram import FusedCompleter, open_completer, repeated_words, with_repeats
from runtime.tokenizer import Tokenizer

HAND_MADE = ["g", "goo", "GOO", "githu", "http", "https:/", "HTTPS://WWW.Goo", "http://www.", "www.",
             "www.wiki", "en.wikipedia.org/wiki/", "amazon.co", "a b", "x.com/%2", "é", "日本",
             "youtube.com/", "news.", "mail.google.c", "stackoverflow.com/q", "bdnews24.com/bd",
             "x.com/foo?q=foobar&z=fo", "a.com/abab/abcd/abab/ab"]


def prefixes(urls: list[str], tokenizer: Tokenizer, count: int) -> tuple[list[str], int]:
    """Random cuts of real URLs (most end mid-piece) plus hand-made ones; also how many are mid-piece."""
    rng = random.Random(7)
    cuts, mid_piece = [], 0
    for url in rng.sample(urls, count):
        cut = url[:rng.randint(1, len(url))]
        cuts.append(cut)
        ids = tokenizer.encode(cut)
        mid_piece += tokenizer.encode(url)[:len(ids)] != ids  # the cut splits a piece of the full URL
    return cuts + HAND_MADE, mid_piece


def test_page_suggestions_equal_python_completer(page, bundle_dir, canonical_urls, monkeypatch):
    """233 prefixes, over 50 of them ending mid-piece: the same five suggestions in the same order
    (a fresh browser context has no history, so every suggestion is the model's), most of them
    unlike the network's own: the page fuses the test bundle's counts.bin in; some of them
    differ without FORCED_FLOOR or would hold a one-character completion without MIN_ADDED_CHARS,
    so the page is checked against both."""
    # Prepare
    completer, network = open_completer(bundle_dir), Completer(bundle_dir)
    typed, mid_piece = prefixes(canonical_urls, network.tokenizer, 210)
    expected = {text: completer.complete(text, k=5) for text in typed}
    with monkeypatch.context() as patch:
        patch.setattr(runtime.complete, "FORCED_FLOOR", 1e-300)
        unfloored = open_completer(bundle_dir)
        floor_matters = sum(unfloored.complete(text, k=5) != expected[text] for text in typed)
    with monkeypatch.context() as patch:
        patch.setattr(runtime.complete, "MIN_ADDED_CHARS", 1)
        one_more = open_completer(bundle_dir)
        rule_matters = sum(one_more.complete(text, k=5) != expected[text] for text in typed)
    open_page(page)
    # Execute
    got = {text: suggestions_for(page, text) for text in typed}
    # Assert
    assert mid_piece >= 50 and len(typed) >= 200
    assert sum(bool(s) for s in expected.values()) >= 0.9 * len(typed), "most prefixes should get suggestions"
    assert isinstance(completer, FusedCompleter), "the test bundle ships counts.bin"
    assert sum(expected[text] != network.complete(text, k=5) for text in typed) >= len(typed) / 2
    assert floor_matters >= 1 and rule_matters >= 1
    wrong = {text: (got[text], expected[text]) for text in typed if got[text] != expected[text]}
    assert not wrong, (f"{len(wrong)} of {len(typed)} prefixes differ (page, python): "
                       f"{list(wrong.items())[:3]}")


LAYOUTS = """async ([vocab, typed]) => {
  const { Completer, stateDims } = await import("/static/completer.js");
  const { Tokenizer } = await import("/static/tokenizer.js");
  const tokenizer = new Tokenizer(vocab);
  const V = tokenizer.pieceBytes.length, L = 2, H = 3;
  // A fake model in the GRU's layout [L, B, H]: the state mixes in each token, log-probs read it.
  const gruStep = (tokens, state) => {
    const B = tokens.length, next = new Float32Array(L * B * H), logProbs = new Float32Array(B * V);
    for (let l = 0; l < L; l++) for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) {
      const i = (l * B + b) * H + h;
      next[i] = Math.tanh(0.7 * state[i] + Math.sin(tokens[b] * (l + 1) * (h + 2)));
    }
    for (let b = 0; b < B; b++) {
      let total = 0;
      for (let v = 0; v < V; v++) {
        let logit = v === vocab.eos_id ? 1.5 : 0;
        for (let l = 0; l < L; l++) {
          for (let h = 0; h < H; h++) logit += 2 * next[(l * B + b) * H + h] * Math.cos(v * (l + 3 * h + 1));
        }
        logProbs[b * V + v] = logit;
        total += Math.exp(logit);
      }
      for (let v = 0; v < V; v++) logProbs[b * V + v] -= Math.log(total);
    }
    return { logProbs, state: next };
  };
  // The same model behind a batch-first description [B, L, H]: transpose in and out.
  const transpose = (data, [d0, d1, d2]) => {
    const out = new Float32Array(data.length);
    for (let i = 0; i < d0; i++) for (let j = 0; j < d1; j++) {
      for (let k = 0; k < d2; k++) out[(j * d0 + i) * d2 + k] = data[(i * d1 + j) * d2 + k];
    }
    return out;
  };
  const batchFirstStep = (tokens, state) => {
    const out = gruStep(tokens, transpose(state, [tokens.length, L, H]));
    return { logProbs: out.logProbs, state: transpose(out.state, [L, tokens.length, H]) };
  };
  const base = { input: "s", output: "s2", dtype: "float32", init: "zeros" };
  const gruSpec = { ...base, shape: [L, "batch", H], batch_axis: 1 };
  const firstSpec = { ...base, shape: ["batch", L, H], batch_axis: 0 };
  const blockedIds = [vocab.pad_id, vocab.unk_id, vocab.bos_id];
  const checked = (step, state) => async (tokens, s) => {
    const size = stateDims(state, tokens.length).reduce((a, b) => a * b, 1);
    if (s.length !== size) throw new Error(`state of ${s.length} values, expected ${size}`);
    return step(tokens, s);
  };
  const make = (step, state) =>
    new Completer({ tokenizer, config: vocab, state, blockedIds, step: checked(step, state) });
  const gru = make(gruStep, gruSpec), first = make(batchFirstStep, firstSpec);
  const out = [];
  for (const text of typed) out.push([await gru.complete(text, 5), await first.complete(text, 5)]);
  return out;
}"""


def test_js_search_depends_on_the_state_description_only(module_page, bundle_dir):
    """The same fake model described as [n_layer, batch, n_hidden] and as [batch, n_layer, n_hidden]
    gives the same suggestions: completer.js knows the state only through its description."""
    # Prepare
    vocab = json.loads((bundle_dir / "tokenizer.json").read_text())
    typed = ["", "g", "githu", "en.wikipedia.org/", "amazon.c"]
    # Execute
    got = module_page.evaluate(LAYOUTS, [vocab, typed])
    # Assert
    assert all(gru == first for gru, first in got), got
    assert sum(len(gru) for gru, _ in got) >= len(typed), "the fake model should suggest something"


JUNK = """async (pairs) => {
  const { junk } = await import("/static/completer.js");
  return pairs.map(([canonical, text]) => [junk(canonical, text), junk(canonical, text, false)]);
}"""


def test_js_junk_rule_equals_python(module_page, canonical_urls):
    """runtime.complete.junk and completer.js junk agree on every cut of 400 real URLs with made-up
    tails (repeated TLDs, TLDs after "/", text after .html) and on non-ASCII text."""
    # Prepare
    rng = random.Random(11)
    tails = ["", ".com", ".br", "a.com", ".com.com", ".com.br", "/.net", "/a.org", "/x.html", "?u=b.com",
             "é.org", ".html", "l", ".htm5", "/x.HTM#a", "/y.html;s=1"]
    pairs = [("github.com", ".com"), ("日本.com", ".jp"), ("a.com/日", "本.org")]
    for url in rng.sample(canonical_urls, 400):
        cut = rng.randint(0, len(url))
        pairs.append((url[:cut], url[cut:] + rng.choice(tails)))
    # Execute
    got = module_page.evaluate(JUNK, pairs)
    # Assert
    expected = [[junk(c, t), junk(c, t, finished=False)] for c, t in pairs]
    assert any(row[0] for row in expected) and not all(row[0] for row in expected)
    assert got == expected, [(p, g, e) for p, g, e in zip(pairs, got, expected, strict=True) if g != e][:3]


ENOUGH = """async (pairs) => {
  const { enough } = await import("/static/completer.js");
  const { splitTyped } = await import("/static/normalize.js");
  return pairs.map(([typed, suggestion]) => enough(splitTyped(typed).canonical,
    [...suggestion].length - [...typed].length));
}"""


def test_js_enough_equals_python(module_page):
    """Characters added are code points in both (an emoji is one, though two UTF-16 units), and both
    let the host's one-character completions through."""
    pairs = [("a.com/x", "a.com/xy"), ("a.com/x", "a.com/xyz"), ("a.com?q", "a.com?qx"),
             ("HTTPS://WWW.A.COM/", "HTTPS://WWW.A.COM/b"), ("a.com/", "a.com/\u00e9"),
             ("a.com/", "a.com/\U0001F600"), ("a.com/", "a.com/\U0001F600x"),
             ("a.com/\U0001F600", "a.com/\U0001F600ab"), ("google.co", "google.com"), ("", "a"),
             ("HTTPS:/", "HTTPS://")]
    expected = [enough(split_typed(typed)[1], len(suggestion) - len(typed)) for typed, suggestion in pairs]
    assert module_page.evaluate(ENOUGH, pairs) == expected
    assert expected == [False, True, False, False, False, False, True, True, True, True, True]


REPEATS = """async (cases) => {
  const { repeatedWords, withRepeats } = await import("/static/ngram.js");
  return cases.map(([typed, fused]) => [repeatedWords(typed), withRepeats(fused, typed, 3)]);
}"""


def test_js_repeated_words_equal_python(module_page, canonical_urls):
    """repeatedWords and withRepeats (ngram.js) give runtime/ngram.py's lists and log shares on
    every cut of 300 real URLs with a word of them typed again, and on hand-made ones."""
    # Prepare
    rng = random.Random(5)
    typed = ["bdnews24.com/bd", "HTTPS://www.BDnews24.com/bd", "a.com/abab/abcd/abab/ab", "a.com/é/ab",
             "x.com/foo?q=foobar&z=fo", "bdnews24.com", "https:/", "a.com/abcf/abce/abcd/ab",
             "w3schools.com/html5/tryit.ht", "x.com/2024 ", "x.com/2024%20", "ftp://ftpserver.ft",
             "ftp://ftpserver/ft"]
    for url in rng.sample(canonical_urls, 300):
        words = re.findall(r"[A-Za-z0-9]{3,}", url)
        again = f"/{rng.choice(words)[:rng.randint(1, 4)]}" if words else ""
        typed.append(url[:rng.randint(1, len(url))] + again)
    # fuse's list: two texts of its own, and one of the repeats too where there is one (their shares add)
    cases = [(text, [(text + "x", math.log(0.7)), (text + "y", math.log(0.2)),
                     *[(repeat, math.log(0.1)) for repeat in repeated_words(text)[:1]]]) for text in typed]
    # Execute
    got = module_page.evaluate(REPEATS, cases)
    # Assert
    expected = [[repeated_words(text), [list(pair) for pair in with_repeats(fused, text, 3)]]
                for text, fused in cases]
    assert sum(bool(words) for words, _ in expected) >= 50, "a word typed again must often be found"
    assert got == expected, [(c, g, e) for c, g, e in zip(cases, got, expected, strict=True) if g != e][:3]


ORDER = """async (lists) => {
  const { candidateOrder } = await import("/static/completer.js");
  return lists.map((scores) => [...candidateOrder(Float64Array.from(scores, (s) => s ?? -Infinity))]);
}"""


def test_js_candidate_order_is_numpys_stable_argsort(module_page):
    """The walk's order over beams x vocabulary, ties and -inf (blocked) included, in chunks that
    grow past 64, 256 and 1024 entries: numpy's stable argsort of -scores, as runtime/complete.py walks."""
    # Prepare
    rng = np.random.default_rng(3)
    lists = []
    for size in (1, 5, 64, 65, 300, 1500, 8192):
        scores = rng.choice(np.linspace(-30, 0, 40), size=size)  # few distinct values: many ties
        scores[rng.random(size) < 0.2] = -np.inf
        lists.append(scores)
    # Execute
    got = module_page.evaluate(ORDER, [[None if s == -np.inf else s for s in x.tolist()] for x in lists])
    # Assert
    expected = [[i for i in np.argsort(-x, kind="stable").tolist() if x[i] != -np.inf] for x in lists]
    assert got == expected
