"""The reference completer: prefixes kept, token healing, k and empty-prefix edge cases."""

import math
import random

import numpy as np
import pytest

import runtime.complete
from formats.bundle import DEFAULT_MIN_PROBABILITY, BundleError, StateSpec, min_probability
from formats.urls import DEFAULT_CORPUS, load_urls, split_typed
from runtime.complete import (
    FORCED_FLOOR,
    MIN_ADDED_CHARS,
    Completer,
    _Beam,
    _enough_bytes,
    enough,
    junk,
    shown,
)
from runtime.ngram import CharNgramLM, PersonalCompleter, open_completer


class UnhealedCompleter(Completer):
    """The same search without token healing: conditions on the typed pieces as they are."""

    def heal(self, ids):
        return ids, b""


class CountingCompleter(Completer):
    """Counts the rows it runs through infer.onnx."""

    rows = 0

    def step(self, tokens, state):
        self.rows += len(tokens)
        return super().step(tokens, state)


class ExtendRecordingCompleter(Completer):
    """Records the (pending, piece) of every candidate the search hands _extend."""

    def __init__(self, bundle_dir):
        super().__init__(bundle_dir)
        self.extended = []

    def _extend(self, beam, piece, prefix):
        self.extended.append((beam.pending, piece))
        return super()._extend(beam, piece, prefix)


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


def test_log_probs_are_about_the_search_scores_of_what_it_found(completer, kasztp_urls):
    """What fuse asks of the network for a count suggestion, checked on the suggestions the search
    itself found (cut points of 40 URLs it trained on, top 3 each): one path an ending scores about
    the search's merged score, at the median within 0.05 nats, and few above it by log 1.5 (a
    beam may miss a path). The first version counted pieces that do not end the text: its median
    was 0.56 nats above."""
    rng = random.Random(3)
    gaps = []
    for url in rng.sample(kasztp_urls[::40], 20) + rng.sample(load_urls(DEFAULT_CORPUS, None), 20):
        typed = url[:rng.randint(1, len(url))]
        ranked, _ = completer.ranked(typed, 3)
        got = completer.log_probs(typed, [text for text, _ in ranked])
        gaps += [log_prob - score for log_prob, (_, score) in zip(got, ranked, strict=True)]
    assert len(gaps) >= 100
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0, abs=0.05)
    assert sum(gap > math.log(1.5) for gap in gaps) <= 0.15 * len(gaps)


def test_log_probs_of_made_up_suggestions_are_low_and_need_no_cache(completer, bundle_dir, monkeypatch):
    """A text the model never saw scores far below what it found; a fresh completer (every piece
    run in _warm's batches) gives the same numbers; more suggestions than the context cache holds
    still finish (the first version looped for ever once BOS's context was evicted). No floor,
    so that every path runs."""
    monkeypatch.setattr(runtime.complete, "FORCED_FLOOR", 1e-300)
    found = completer.complete("githu", 1)
    made_up = ["githuqzx-made-up", "githu.qq/zz?"]
    warm = completer.log_probs("githu", found + made_up)
    assert warm == pytest.approx(Completer(bundle_dir).log_probs("githu", found + made_up), abs=1e-4)
    assert warm[0] > max(warm[1:]) + 3 and all(score < 0 for score in warm)
    many = completer.log_probs("x", [f"x{i}" for i in range(200)])  # 600 paths, cache of 512
    assert len(many) == 200 and all(-math.inf < score < 0 for score in many)
    assert completer.log_probs("x", []) == []


def test_log_probs_stop_forcing_a_text_once_it_falls_below_the_floor(bundle_dir, monkeypatch):
    """A long made-up text scores -inf after a few batched steps instead of being forced piece by
    piece to its end (a slow keystroke's biggest part, docs/BENCHMARKS.md); a text above the
    floor scores as without it."""
    found = Completer(bundle_dir).complete("githu", 1)
    junk_text = "githu" + "qzxj+wvkq-" * 6
    floored = CountingCompleter(bundle_dir)
    scores = floored.log_probs("githu", found + [junk_text])
    monkeypatch.setattr(runtime.complete, "FORCED_FLOOR", 1e-300)
    forced = CountingCompleter(bundle_dir)
    unfloored = forced.log_probs("githu", found + [junk_text])
    assert scores[0] == pytest.approx(unfloored[0], abs=1e-5) and unfloored[0] > math.log(FORCED_FLOOR)
    assert scores[1] == -math.inf and -math.inf < unfloored[1] < math.log(FORCED_FLOOR)
    assert floored.rows * 3 < forced.rows


class ForceRecordingCompleter(Completer):
    """Records what _force ran and returned, and the model calls made after it and inside it."""

    def __init__(self, bundle_dir):
        super().__init__(bundle_dir)
        self.forcing, self.ran, self.forced, self.floor = False, set(), {}, 0.0
        self.calls_after = self.calls_forcing = 0

    def _force(self, paths, root, floor):
        self.forcing, self.floor = True, floor
        try:
            self.forced = super()._force(paths, root, floor)
            return self.forced
        finally:
            self.forcing = False

    def remember(self, key, log_probs, state):
        if self.forcing:
            self.ran.add(key)
        super().remember(key, log_probs, state)

    def step(self, tokens, state):
        self.calls_after += not self.forcing
        self.calls_forcing += self.forcing
        return super().step(tokens, state)


def test_log_probs_run_only_what_the_floor_lets_through(bundle_dir):
    """_force runs no prefix whose pieces fell below the floor, one batched call a depth (paths
    that share a prefix run it once), and the scoring after it runs the model no more."""
    completer = ForceRecordingCompleter(bundle_dir)
    found = completer.complete("githu", 1)
    completer.calls_after = 0
    scores = completer.log_probs("githu", found + ["githu" + "qzxj+wvkq-" * 6, "githu.com/a", "githubqq.com",
                                                   "githu.qq/zz?"])
    assert any(score == -math.inf for score in scores) and any(score > -math.inf for score in scores)
    assert completer.calls_after == 0
    depths = max(map(len, completer.forced)) - min(map(len, completer.forced))
    assert completer.calls_forcing <= depths
    assert completer.ran and all(completer.forced[key][0] >= completer.floor for key in completer.ran)
    assert any(log_prob < completer.floor for log_prob, _ in completer.forced.values())


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


def test_typing_on_reuses_the_beams_of_the_last_keystroke(bundle_dir):
    """Typing a URL key by key runs under half the infer rows of searching each prefix afresh (the
    cache holds every piece sequence a search ran, not only the typed context), same suggestions."""
    url = "en.wikipedia.org/wiki/Main_Page"
    typing, fresh_rows, fresh_suggestions = CountingCompleter(bundle_dir), 0, []
    for end in range(1, len(url) + 1):
        fresh = CountingCompleter(bundle_dir)
        fresh_suggestions.append(fresh.complete(url[:end]))
        fresh_rows += fresh.rows
    assert [typing.complete(url[:end]) for end in range(1, len(url) + 1)] == fresh_suggestions
    assert typing.rows < 0.5 * fresh_rows, (typing.rows, fresh_rows)


@pytest.mark.parametrize("pending", [b"h", b"hu", b"co", b"wik", b"/", b"%2"])
def test_a_pending_beam_may_take_only_the_reproducing_pieces(completer, pending):
    """Every piece outside reproducing(pending) is blocked or one _extend refuses, so scoring it -inf
    changes no search; the reproducing ones are those that start with pending or are a prefix of it."""
    beam = _Beam(0.0, np.zeros(1), np.zeros(1), b"", pending, ())
    reproducing = set(completer.reproducing(pending).tolist())
    pieces = completer.tokenizer.piece_bytes
    assert reproducing
    assert all(pieces[p].startswith(pending) or pending.startswith(pieces[p]) for p in reproducing)
    taken = [p for p in range(len(pieces)) if p not in reproducing and not completer.blocked[p]
             and completer._extend(beam, p, b"x") is not None]
    assert not taken, [pieces[p] for p in taken]
    log_probs = np.log(np.random.default_rng(0).dirichlet(np.ones(len(pieces)))).astype(np.float32)
    mass = -math.inf  # healed's rule spelled out over every piece, in id order
    for p, piece_bytes in enumerate(pieces):
        if piece_bytes and not completer.blocked[p] and p != completer.eos_id \
                and (piece_bytes.startswith(pending) or pending.startswith(piece_bytes)):
            mass = float(np.logaddexp(mass, float(log_probs[p])))
    assert completer.healed(log_probs, pending) == pytest.approx(mass, abs=1e-12)


def test_the_search_never_walks_to_a_piece_a_pending_beam_cannot_take(bundle_dir):
    """Typed mid-piece, the root beam's candidates are the pieces that could reproduce the cut
    (the walk used to hand _extend hundreds of others, each refused)."""
    completer = ExtendRecordingCompleter(bundle_dir)
    for typed in ("githu", "en.wikipe", "stackov", "docs.py"):
        assert completer.complete(typed, 5)
    walked = [(pending, piece) for pending, piece in completer.extended if pending]
    assert walked, "the prefixes were typed mid-piece"
    assert all(piece in completer.reproducing(pending) for pending, piece in walked)


def test_search_depends_on_the_state_description_only(completer, bundle_dir):
    """Another state layout in the manifest gives the same suggestions (batch axis 0 instead of 1)."""
    other = BatchFirstCompleter(bundle_dir)
    for prefix in ("", "g", "githu", "en.wikipedia.org/", "amazon.c"):
        assert other.complete(prefix, 5) == completer.complete(prefix, 5), prefix


@pytest.mark.parametrize(("canonical", "text"), [
    ("github.com", ".com"), ("github.com", ".br"), ("google.com", "a.com"), ("x.org", "s"),  # rule 1
    ("goo", "gle.com.com"), ("goo", "gle.com.google.com"), ("a.b.", "info.biz"), ("a.c", "om.ac.uk"),  # 2
    ("github.com/", ".net"), ("en.wikipedia.org/", "a.org"), ("en.wikipedia.org/", "wikipedia.org"),
    ("a.com/x", "/.git"), ("a.com/b", "log.com"),  # rule 3
    ("docs.python.org/3/library/sys.html", ".html"), ("a.com/x.htm", "li"), ("a.com/", "x.html5"),
    ("a.com/x.HTML", "x"), ("a.com/x.html", "l"),  # rule 4
])
def test_junk_refuses_repeated_and_misplaced_tlds_and_text_after_html(canonical, text):
    assert junk(canonical, text)


@pytest.mark.parametrize(("canonical", "text"), [
    ("goo", "gle.com.br"), ("bbc.co", ".uk"), ("google.com.", "br"), ("maybank2u.com", "/my"),  # hosts
    ("tools.ietf", ".org"), ("yahoo.co", "m"), ("docs.py", "thon.org"), ("eu", ".com"), ("go", ".com"),
    ("in", "fo.cern.ch"), ("x.com.", "google.com"), ("abc.net", "/news"),
    ("a.com/", "index.html"), ("a.com/", "s.php"), ("a.com/x.", "com"), ("a.com/.", "well-known"),  # paths
    ("a.com/share", "?u=b.com"), ("a.com/", "coollayout.net.au"), ("", "a.com"),
    ("a.com/x.htm", "l"), ("a.com/", "x.html#top"), ("a.com/", "x.html;jsessionid=1"), ("a.com/x.html", "/a"),
    ("a.com/x.html", "?q=1"), ("a.com/x.html.html", ""), ("a.com/x.html", ""),  # rule 4: fine
])
def test_junk_allows_real_hosts_and_paths_and_what_was_typed(canonical, text):
    assert not junk(canonical, text)


@pytest.mark.parametrize("typed", ["goo", "google.com", "x.com", "github.com", "github.com/",
                                   "en.wikipedia.org/", "docs.py", "amazon.com/", "stackov"])
def test_no_junk_among_the_suggestions(completer, typed):
    """The test bundle, unfiltered, offered google.com.com, google.com.org and x.com.gov here."""
    _, canonical = split_typed(typed)
    suggestions = completer.complete(typed, k=5)
    assert suggestions and not [s for s in suggestions if junk(canonical, s[len(typed):])]


def test_the_ngram_refuses_junk_too():
    """Trained on junk, the 8-gram still never suggests it (the same rule as the model's)."""
    lm = CharNgramLM(["google.com.com", "en.wikipedia.org/a.org", "github.com.br", "github.com/x"])
    assert all(s.startswith("google.com/") for s in lm.complete("google.com", 3))
    assert "en.wikipedia.org/a.org" not in lm.complete("en.wikipedia.org/", 3)
    assert lm.complete("github.com", 1) == ["github.com/x"]


@pytest.mark.parametrize(("typed", "suggestion", "allowed"), [
    ("a.com/x", "a.com/xy", False), ("a.com/x", "a.com/xyz", True), ("a.com?q", "a.com?qx", False),
    ("https://www.a.com/", "https://www.a.com/b", False), ("a.com/", "a.com/\u00e9", False),
    ("a.com/", "a.com/\U0001F600", False), ("a.com/", "a.com/\U0001F600x", True),
    ("google.co", "google.com", True), ("", "a", True), ("HTTPS:/", "HTTPS://", True)])
def test_enough_counts_characters_added_past_the_host(typed, suggestion, allowed):
    """Code points, not bytes nor UTF-16 units (an emoji is one character, as a person sees it), and
    only past the host: while it is typed the page completes the top guess inline, Enter visits it.
    The network's search counts the generated UTF-8 bytes, the n-grams' the generated characters."""
    _, canonical = split_typed(typed)
    generated = suggestion[len(typed):]
    assert MIN_ADDED_CHARS == 2
    assert enough(canonical, len(generated)) is allowed
    assert _enough_bytes(canonical.encode(), generated.encode()) is allowed


PATHS = ["en.wikipedia.org/wiki/Main_Page", "github.com/login", "docs.python.org/3/library/os.html",
         "stackoverflow.com/questions/tagged/python", "amazon.com/gp/help/customer",
         "news.ycombinator.com/item?id=1", "youtube.com/watch?v=abc", "reddit.com/r/programming/comments",
         "bbc.co.uk/news/world"]


@pytest.mark.parametrize("kind", ["network", "fused", "personal"])
def test_no_suggestion_past_the_host_adds_a_single_character(bundle_dir, monkeypatch, kind):
    """Popular URLs typed up to every cut past their host: a one-character completion
    (github.com/logi -> github.com/login) saves no key, and none is shown; without the rule the
    same completer shows some. The lists fill up as well with the rule as without it: the search
    goes on past the texts it drops (it stopped at k texts, then dropped some: 23 of these 127
    network lists fell short of five)."""
    def lists():
        network = Completer(bundle_dir)
        completer = {"network": network, "fused": open_completer(bundle_dir),
                     "personal": PersonalCompleter(network, PATHS)}[kind]
        return {typed: completer.complete(typed, 5) for typed in typed_texts}

    def one_character(found):
        return [(typed, s) for typed, shown in found.items() for s in shown if len(s) == len(typed) + 1]

    typed_texts = [url[:cut] for url in PATHS for cut in range(url.index("/") + 1, len(url))]
    ruled = lists()
    with monkeypatch.context() as patch:
        patch.setattr(runtime.complete, "MIN_ADDED_CHARS", 0)
        unruled = lists()
    assert not one_character(ruled)
    assert len(one_character(unruled)) >= 10
    assert [len(shown) for shown in ruled.values()] == [len(shown) for shown in unruled.values()]


class RawScoreCompleter(Completer):
    """The threshold on the raw score: no credit for the mass that reproduces the backed-off bytes."""

    def healed(self, log_probs, pending):
        return 0.0


@pytest.mark.parametrize("completion", [{}, {"min_probability": 0}, {"min_probability": 0.25},
                                        {"min_probability": 1}])
def test_the_threshold_comes_from_the_manifest(completion):
    manifest = {"completion": completion} if completion else {}
    assert min_probability(manifest) == completion.get("min_probability", DEFAULT_MIN_PROBABILITY)


@pytest.mark.parametrize("completion", [{"min_probability": -0.1}, {"min_probability": 1.5},
                                        {"min_probability": float("nan")}, {"min_probability": "0.1"},
                                        {"min_probability": True}, {"min_probability": None}, [0.1]])
def test_a_bad_threshold_is_refused(completion):
    with pytest.raises(BundleError, match="min_probability"):
        min_probability({"completion": completion})


def test_the_threshold_keeps_the_likely_prefix_of_the_list(bundle_dir):
    """tau drops exactly the suggestions whose score - healed is below log(tau), never reorders."""
    strict = Completer(bundle_dir, threshold=0.05)
    dropped = kept = 0
    for typed in ["", "g", "githu", "amazon.c", "en.wikipedia.org/", "x", "qq", "stackov"]:
        ranked, healed = strict.ranked(typed, 5)
        got = strict.complete_scored(typed, 5)
        assert got == ranked[:len(got)]
        assert all(score - healed >= math.log(0.05) for _, score in got)
        assert all(score - healed < math.log(0.05) for _, score in ranked[len(got):])
        dropped, kept = dropped + len(ranked) - len(got), kept + len(got)
    assert dropped > 0 and kept > 0, (dropped, kept)


def test_the_threshold_stops_beams_that_can_only_end_below_it(bundle_dir):
    """With tau the search runs under 60 % of the model rows it runs without, and shows the same
    suggestions as the unpruned search thresholded afterwards for at least 90 % of 60 prefixes."""
    urls = load_urls(DEFAULT_CORPUS, None)[:20] + ["en.wikipedia.org/wiki/Main_Page", "github.com/login"]
    typed = [url[:end] for url in urls for end in (1, len(url) // 2, len(url) - 1)]
    pruned = CountingCompleter(bundle_dir, threshold=0.02)
    everything = CountingCompleter(bundle_dir, threshold=0.0)
    same = 0
    for text in typed:
        got = pruned.complete(text, 5)
        same += got == [suggestion for suggestion, _ in shown(*everything.ranked(text, 5), 0.02)]
    assert pruned.rows < 0.6 * everything.rows, (pruned.rows, everything.rows)
    assert same >= 0.9 * len(typed), (same, len(typed))


def test_the_threshold_judges_what_was_typed_not_where_a_piece_was_cut(bundle_dir):
    """Known domains typed up to the middle of a piece: P(suggestion | typed) clears tau far more
    often than the raw score, which also pays for reproducing the backed-off bytes."""
    normalised = Completer(bundle_dir, threshold=0.05)
    pairs = _mid_piece_prefixes(normalised, load_urls(DEFAULT_CORPUS, None)[:40])
    raw = RawScoreCompleter(bundle_dir, threshold=0.05)
    found = sum(url in normalised.complete(prefix, 5) for prefix, url in pairs) / len(pairs)
    found_raw = sum(url in raw.complete(prefix, 5) for prefix, url in pairs) / len(pairs)
    assert found >= found_raw + 0.1, (found, found_raw)
