"""The personal n-gram (web_client/ngram.js) is runtime/ngram.py's twin, and the page learns from
its visits at once: better suggestions for a host's other paths after visiting a few of them."""

from __future__ import annotations

import random

from page_helpers import open_page, suggestions_for, visit

from runtime.ngram import CharNgramLM, mix
from study.evaluate import keystroke_savings

COMPLETE = """async ([urls, typed]) => {
  const { CharNgram } = await import("/static/ngram.js");
  const lm = new CharNgram(urls);
  return typed.map((text) => lm.completeScored(text, 5));
}"""
MIX = """async (cases) => {
  const { mixSuggestions } = await import("/static/ngram.js");
  return cases.map(([model, personal, k]) => mixSuggestions(model, personal, k));
}"""
ODD = ["日本.jp/パス/a", "é.fr/x?y=1", "😀.ws/a/b", "a.com/😀/x", "google.com.com", "a.org/.net"]


def test_js_ngram_equals_python_score_for_score(module_page, canonical_urls):
    """300 real URLs (and a few non-ASCII and junk ones), 150 prefixes: the same suggestions with
    bit-identical scores."""
    # Prepare
    rng = random.Random(5)
    urls = rng.sample(canonical_urls, 300) + ODD
    typed = [url[:rng.randint(0, len(url))] for url in rng.sample(urls, 140)]
    typed += ["", "日", "😀", "a.com/", "google.com", "HTTPS://www.A", "a.org/"]
    lm = CharNgramLM(urls)
    expected = [[[text, score] for text, score in lm.complete_scored(t, 5)] for t in typed]
    # Execute
    got = module_page.evaluate(COMPLETE, [urls, typed])
    # Assert
    assert sum(map(bool, expected)) >= 140
    wrong = [(t, g, e) for t, g, e in zip(typed, got, expected, strict=True) if g != e]
    assert not wrong, f"{len(wrong)} of {len(typed)} differ (typed, page, python): {wrong[:2]}"


def test_js_mix_equals_python(module_page):
    """Random model log-probs and personal scores over a few shared texts, k of 1 to 5."""
    rng = random.Random(9)
    texts = ["a", "b", "c", "d", "e", "é", "😀"]
    cases = []
    for _ in range(200):
        model = [[t, -rng.expovariate(0.5)] for t in rng.sample(texts, rng.randint(0, 5))]
        personal = [[t, rng.random() ** 3] for t in rng.sample(texts, rng.randint(0, 5))]
        cases.append([model, personal, rng.randint(1, 5)])
    got = module_page.evaluate(MIX, cases)
    expected = [mix([tuple(m) for m in mod], [tuple(p) for p in per], k) for mod, per, k in cases]
    assert got == expected


HISTORY = ["docs.python.org/3/library/os.html", "docs.python.org/3/library/sys.html",
           "docs.python.org/3/library/re.html", "docs.python.org/3/library/json.html",
           "docs.python.org/3/tutorial/index.html", "docs.python.org/3/tutorial/classes.html",
           "docs.python.org/3/reference/datamodel.html", "docs.python.org/3/whatsnew/3.12.html"]
LATER = ["docs.python.org/3/library/functools.html", "docs.python.org/3/library/pathlib.html",
         "docs.python.org/3/tutorial/errors.html", "docs.python.org/3/reference/import.html"]


def page_ksr(page, targets: list[str]) -> float:
    """KSR@3 (study/evaluate.py's rule) with the page's own top three suggestions."""
    return keystroke_savings(targets, lambda typed: suggestions_for(page, typed)[:3] if typed else [], 3)


def test_visiting_a_host_improves_suggestions_for_its_other_paths(page):
    """Eight visits on docs.python.org, none of the four later URLs among them: the page saves
    clearly more keystrokes on those afterwards (the personal n-gram, no training needed)."""
    # Prepare
    open_page(page)
    before = page_ksr(page, LATER)
    # Execute
    for url in HISTORY:
        visit(page, url)
    after = page_ksr(page, LATER)
    # Assert
    print(f"page KSR@3 on {len(LATER)} later docs.python.org URLs: {before:.3f} -> {after:.3f}")
    assert after >= before + 0.2, (before, after)
