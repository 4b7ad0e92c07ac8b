"""History suggestions (web_client/history_index.js): visited URLs come first in the URL bar."""

from __future__ import annotations

import random

import pytest
from page_helpers import open_page, shown_suggestions, visit
from playwright.sync_api import expect

from formats.urls import normalize_url, split_typed

MATCH = """async ([visits, queries]) => {
  const { HistoryIndex } = await import("/static/history_index.js");
  const index = new HistoryIndex(visits);
  return queries.map(([typed, limit]) => index.match(typed, limit));
}"""
MERGE = """async ([history, model, k]) => {
  const { mergeSuggestions } = await import("/static/history_index.js");
  return mergeSuggestions(history, model, k).map(({ text, source }) => [text, source]);
}"""
CPYTHON = "https://www.GitHub.com/python/cpython"  # as the user typed it when visiting


def match(page, visits: list[tuple[str, int]], queries: list[tuple[str, int]]) -> list[list[str]]:
    """HistoryIndex(visits).match(typed, limit) in the browser for each query."""
    return page.evaluate(MATCH, [[{"url": url, "visitedAt": at} for url, at in visits], queries])


def naive_match(visits: list[tuple[str, int]], typed: str, limit: int) -> list[str]:
    """The oracle: count every canonical URL's visits and its last visit, filter, sort, cut."""
    fill, canonical = split_typed(typed)
    stats: dict[str, tuple[int, int]] = {}
    for url, at in visits:
        key = normalize_url(url)
        if key is not None:
            count, last = stats.get(key, (0, at))
            stats[key] = (count + 1, max(last, at))
    found = [url for url in stats if url.startswith(canonical) and url != canonical]
    found.sort(key=lambda url: (-stats[url][0], -stats[url][1]))
    return [typed + fill + url[len(canonical):] for url in found[:limit]]


def decorated(prefix: str, rng: random.Random) -> str:
    """A canonical prefix as a user might type it: maybe a scheme, maybe www., maybe capitals."""
    host, slash, rest = prefix.partition("/")
    host = rng.choice([host, host.upper(), host.capitalize()])
    return rng.choice(["", "http://", "HTTPS://"]) + rng.choice(["", "www."]) + host + slash + rest


def test_matches_equal_a_naive_oracle_on_real_urls(module_page, canonical_urls):
    """3,000 visits of 600 real URLs (repeats, raw forms) and 300 typed prefixes: the same
    suggestions, in the same order, as counting and sorting everything."""
    # Prepare: distinct visit times, so the ranking has no ties to break
    rng = random.Random(3)
    urls = rng.sample(canonical_urls, min(600, len(canonical_urls)))
    visits = [(decorated(url, rng), at) for at, url in enumerate(rng.choices(urls, k=3000))]
    queries = [(decorated(url[:rng.randint(1, len(url))], rng), rng.choice([1, 2, 5]))
               for url in rng.sample(urls, 300)]
    # Execute
    got = match(module_page, visits, queries)
    # Assert
    expected = [naive_match(visits, typed, limit) for typed, limit in queries]
    assert sum(map(bool, expected)) >= 250, "most prefixes should match something"
    wrong = [(q, g, e) for q, g, e in zip(queries, got, expected, strict=True) if g != e]
    assert not wrong, f"{len(wrong)} of {len(queries)} differ (query, page, oracle): {wrong[:3]}"


def test_ranks_by_visits_then_recency(module_page):
    """Two visits beat one; among single visits the newer wins; the limit cuts the list."""
    visits = [("a.com/old", 1), ("a.com/twice", 2), ("https://a.com/twice", 3), ("a.com/new", 4),
              ("b.com/x", 5)]
    got = match(module_page, visits, [("a.com/", 2), ("a.com/", 5), ("a.com/", 0)])
    assert got == [["a.com/twice", "a.com/new"], ["a.com/twice", "a.com/new", "a.com/old"], []]


TYPED = {  # what the user types -> what the visited CPYTHON becomes
    "HTTPS://GitHub.com/py": ["HTTPS://GitHub.com/python/cpython"],
    "www.github.com/": ["www.github.com/python/cpython"],
    "GITHUB.COM/python/c": ["GITHUB.COM/python/cpython"],
    "https:/": ["https://github.com/python/cpython"],  # the scheme is being typed
    "github.com/python/cpython": [],  # nothing longer was visited
    "github.com/Python": [],  # a path keeps its case
    "gitlab": [],
}


@pytest.mark.parametrize("typed", TYPED)
def test_suggestion_starts_with_exactly_what_was_typed(module_page, typed):
    """The typed text is mapped like the completer maps it, and kept as typed."""
    assert match(module_page, [(CPYTHON, 1)], [(typed, 2)]) == [TYPED[typed]]


def test_merge_puts_history_first_without_duplicates(module_page):
    """History first, then the model's suggestions that are not already shown, five at most."""
    got = module_page.evaluate(MERGE, [["a/1", "a/2"], ["a/2", "a/x", "a/y", "a/z", "a/w"], 5])
    assert got == [["a/1", "history"], ["a/2", "history"], ["a/x", "model"], ["a/y", "model"],
                   ["a/z", "model"]]


def test_a_visited_url_comes_first_is_marked_and_goes_when_deleted(page):
    """After one visit, its URL is the first of five suggestions for every way of typing its
    prefix, tagged visibly and for screen readers; deleting the visit removes the suggestion."""
    # Prepare
    open_page(page)
    visit(page, CPYTHON)
    for typed, first in [("github.com/", "github.com/python/cpython"),
                         ("HTTPS://GitHub.com/py", "HTTPS://GitHub.com/python/cpython"),
                         ("www.github.com/python/c", "www.github.com/python/cpython")]:
        # Execute
        shown = shown_suggestions(page, typed)
        # Assert
        assert shown[0] == (first, "history")
        assert len(shown) == 5 and len({text for text, _ in shown}) == 5
        assert [source for _, source in shown[1:]] == ["model"] * 4
    option = page.get_by_role("option", name="www.github.com/python/cpython, from your history")
    expect(option.locator(".history-tag")).to_be_visible()
    expect(page.locator("#suggestions .history-tag")).to_have_count(1)
    # Execute: delete the visit
    page.keyboard.press("Escape")
    page.get_by_role("button", name=f"Delete {normalize_url(CPYTHON)} from the local history").click()
    expect(page.locator("#history li")).to_have_count(0)
    # Assert
    shown = shown_suggestions(page, "github.com/")
    assert "github.com/python/cpython" not in [text for text, _ in shown]
    assert [source for _, source in shown] == ["model"] * len(shown)
