"""The reference completer: prefixes kept, token healing, k and empty-prefix edge cases."""

import numpy as np
import pytest

from formats.bundle import StateSpec
from formats.urls import DEFAULT_CORPUS, load_urls
from runtime.complete import Completer


class UnhealedCompleter(Completer):
    """The same search without token healing: conditions on the typed pieces as they are."""

    def heal(self, ids):
        return ids, b""


class BatchFirstCompleter(Completer):
    """The same model described with another state layout, [batch, n_layer, n_hidden]: the
    completer must work from the manifest's description alone."""

    def __init__(self, bundle_dir):
        super().__init__(bundle_dir)
        layers, _, hidden = self.state.shape
        self.state = StateSpec(self.state.input, self.state.output, ("batch", layers, hidden), 0,
                               self.state.dtype, self.state.init)

    def step(self, tokens, state):
        """The real graph's layout is [n_layer, batch, n_hidden]: transpose in and out."""
        log_probs, new_state = super().step(tokens, np.ascontiguousarray(state.transpose(1, 0, 2)))
        return log_probs, np.ascontiguousarray(new_state.transpose(1, 0, 2))


@pytest.fixture(scope="module")
def completer(bundle_dir):
    return Completer(bundle_dir)


@pytest.mark.parametrize("typed", ["", "g", "githu", "https://www.yout", "HTTPS:/", "Wiki", "amazon.c",
                                   "en.wikipedia.org/", "ünï"])
def test_suggestions_start_with_the_typed_text(completer, typed):
    suggestions = completer.complete(typed, k=5)
    assert 1 <= len(suggestions) <= 5
    assert len(set(suggestions)) == len(suggestions)
    for suggestion in suggestions:
        assert suggestion.startswith(typed) and len(suggestion) > len(typed)


def test_suggestions_stop_at_the_end_of_a_path_segment(completer):
    for suggestion in completer.complete("en.wikipedia.org/", k=5) + completer.complete("goo", k=5):
        rest = suggestion.split("/", 1)[1] if "/" in suggestion else ""
        assert "/" not in rest and "?" not in suggestion


def _mid_piece_prefixes(completer, urls):
    """(prefix, url) pairs whose prefix ends inside one of the url's pieces."""
    pairs = []
    for url in urls:
        ends, position = set(), 0
        for piece in completer.tokenizer.encode(url):
            position += len(completer.tokenizer.piece_bytes[piece])
            ends.add(position)
        pairs += [(url[:cut], url) for cut in range(2, len(url))
                  if cut not in ends and "." not in url[cut - 1:cut + 1]]
    return pairs


def test_token_healing_completes_mid_piece_prefixes(completer, bundle_dir):
    """Known domains typed up to the middle of a piece are found; without healing they are not."""
    pairs = _mid_piece_prefixes(completer, load_urls(DEFAULT_CORPUS, None)[:40])
    assert len(pairs) > 100
    healed = sum(url in completer.complete(prefix, 5) for prefix, url in pairs) / len(pairs)
    unhealed_completer = UnhealedCompleter(bundle_dir)
    unhealed = sum(url in unhealed_completer.complete(prefix, 5) for prefix, url in pairs) / len(pairs)
    assert healed >= 0.6, healed
    assert unhealed <= healed - 0.4, (healed, unhealed)


@pytest.mark.parametrize("k", [0, 1, 3, 8])
def test_k_bounds_the_number_of_suggestions(completer, k):
    assert len(completer.complete("a", k=k)) == min(k, len(completer.complete("a", k=8)))
    assert len(completer.complete("a", k=k)) <= k


def test_empty_prefix_suggests_popular_hosts(completer):
    suggestions = completer.complete("", k=5)
    assert len(suggestions) == 5
    assert all("/" not in s and "." in s for s in suggestions)


def test_results_are_deterministic_and_cache_independent(completer, bundle_dir):
    first = [completer.complete(p) for p in ("githu", "github.com/", "githu")]
    fresh = Completer(bundle_dir)
    assert first == [fresh.complete(p) for p in ("githu", "github.com/", "githu")]


def test_search_depends_on_the_state_description_only(completer, bundle_dir):
    """Another state layout in the manifest gives the same suggestions (batch axis 0 instead of 1)."""
    other = BatchFirstCompleter(bundle_dir)
    for prefix in ("", "g", "githu", "en.wikipedia.org/", "amazon.c"):
        assert other.complete(prefix, 5) == completer.complete(prefix, 5), prefix
