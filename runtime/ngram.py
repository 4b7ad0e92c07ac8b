"""A character n-gram URL completer: the yardstick, a bundle's count component, the personal n-gram.

One class, three uses: ``fedurl-eval`` prints it as the ``8-gram`` row (built from ``--train``);
a bundle ships one built from its training corpus, counts below 5 pruned (``counts.bin``), that
the completer mixes with the network's suggestions (``fuse``, ``FusedCompleter``); and the page
builds one from the user's own visits and mixes it in too (``mix``). ``web_client/ngram.js`` is
the twin of this module, suggestion for suggestion.

Training (``CharNgramLM(urls)``, ``add``): every canonical URL u (formats/urls.py) becomes the
symbol string ``BOS * (order - 1) + u + EOS`` (``BOS`` = U+0002, ``EOS`` = U+0003, never in a
canonical URL; a symbol is one Unicode code point). For each position i and each context length
n = 0 .. order-1, the count c(ctx, x) of symbol x after the n symbols ctx before it goes up by
one. Order 8 is 7 symbols of context; the BOS padding makes "the URL starts here" a context.

Scoring (stupid backoff, Brants et al. 2007, "Large language models in machine translation"):
with ctx_n the last n symbols of the history h (BOS padding + canonical prefix + generated text),

    S(x | h) = c(ctx_n, x) / c(ctx_n) * alpha ** (order - 1 - n)

for the longest n <= order-1 with c(ctx_n, x) > 0, where c(ctx) counts every symbol after ctx.
A context never seen costs its factor alpha like any other. S is a score here, not a probability.
Scores multiply in float64 (no logarithms): the ratio first, then the power of alpha (a table
built by repeated multiplication), then the beam's score; IEEE products are the same in
Python and JS, so the browser's twin ranks bit for bit alike.

A bundle's count component scores with interpolated absolute discounting instead (Ney, Essen and
Kneser 1994; ``discount`` D = ``COUNT_DISCOUNT``): a probability, every order mixed in rather than
the longest matched alone. Walking the contexts of the history that were counted, longest first,
with a weight W starting at 1:

    S(x | h) += W * max(c(ctx_n, x) - D, 0) / c(ctx_n)    for each x counted after ctx_n
    W *= (c(ctx_n) - sum_x max(c(ctx_n, x) - D, 0)) / c(ctx_n)

then S(x | h) += W / V for each of the V symbols counted at all (the empty context's). The counts
pruned away (counts.bin keeps each context's total) go to the shorter contexts with the discounts.
The same float64 operations in the same order in ngram.js. Across sources it saved more keys than
stupid backoff typing kasztp and unseen Tranco domains, about as many typing ISCX, and far more
under the shipped threshold (docs/RESULTS.md, "the count component discounted"); the yardstick
and the personal n-gram keep stupid backoff (the 8-gram of goal 1, and the personal weight was
tuned on it).

Completion (``complete_scored``): ``runtime/complete.py``'s search with characters for pieces (no
token healing: a character never spans the cut).
1. ``split_typed(typed)`` -> (fill, canonical prefix); the history is BOS padding + prefix.
2. Each step scores every (live beam, next symbol) pair as beam score x S(symbol | history);
   per history only the finishing symbols (EOS, "/", "?") and the ``beam_width`` best others are
   candidates (no other could be taken). Candidates are walked best first, ties by beam index,
   then symbol (code point). A candidate *finishes* on EOS once text was generated, or on "/" or
   "?" at position >= 1 of the generated text: the suggestion is the text before it (end of the
   host or of a path segment), unless ``runtime.complete.junk`` refuses it (a repeated TLD, a
   TLD right after "/"); a live beam that can only end as junk is dropped. Finished texts merge
   by adding scores. The walk stops once
   ``beam_width`` live beams are taken.
3. Stop when no beam is live, after ``max_chars`` steps, or when k suggestions have finished and
   the best live beam scores below the k-th. Return the top k by score, ties by text (code points),
   as ``typed + fill + text`` with the score.

Against the same algorithm summed in log space, only the order of (near-)tied suggestions differs.

What the page shows for a bundle with counts (``FusedCompleter``) also offers the word being typed
past the host finished as one typed earlier in the same URL (``repeated_words``, ``with_repeats``).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Iterable

from formats import counts as counts_format
from formats.bundle import load_bundle
from formats.urls import split_typed
from runtime.complete import MIN_ADDED_CHARS, Completer, enough, junk

BOS = "\x02"
EOS = "\x03"
BOUNDARY_CHARS = "/?"
ORDER = 8
ALPHA = 0.4
BEAM_WIDTH = 6
MAX_CHARS = 48
RANKED_CACHE_SIZE = 500_000
# mix(): the model's share w; the personal n-gram gets 1 - w. The model's side is with_repeats()'s shares
# (about 1 over a list) and the personal side products of frequencies, so the n-gram needs most of the
# weight to count: 0.15 beat 0.5 on 12 of 12 hosts or tied (docs/RESULTS.md, the personal weight).
PERSONAL_WEIGHT = 0.15
COUNTS_FILE = "counts.bin"  # a bundle's count component (formats/counts.py)
FUSION_K = 6  # suggestions the network and the count component each offer fuse()
FUSION_WEIGHT = 0.5  # fuse(): the weight of the network's log-prob; the counts' log S gets the rest
COUNT_FLOOR = 1e-300  # fuse(): a count score S below this (0: a symbol never counted) counts as this
COUNT_DISCOUNT = 2.0  # a bundle's count component: absolute discounting's D (D 0.75 / 3 were worse)
# with_repeats(): the words already typed in the URL get this share of the list, fuse()'s the rest; at most
# REPEAT_K of them, the share split evenly (0.3 / 0.5 / 0.7 and 1 / 2 / 3 of them: docs/RESULTS.md)
REPEAT_WEIGHT = 0.5
REPEAT_K = 2
REPEAT_TYPED = 2  # repeated_words(): characters of the word that must be typed first (3 saved less)
WORD_CHARS = string.ascii_letters + string.digits
_WORD = re.compile(r"[A-Za-z0-9]+")
_ANY_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)  # "ftp://", which split_typed keeps


class CharNgramLM:
    """Character n-gram LM over canonical URLs, and its beam-search completer: stupid backoff, or
    interpolated absolute discounting with a ``discount``.
    """

    def __init__(self, urls: Iterable[str] = (), order: int = ORDER, alpha: float = ALPHA,
                 beam_width: int = BEAM_WIDTH, max_chars: int = MAX_CHARS, discount: float | None = None,
                 every_length: bool = False):
        """every_length: also finish suggestions past the host that add a single character, which
        the completers never show (runtime/complete.py MIN_ADDED_CHARS); the yardstick of goal 1 does.
        """
        assert order >= 1, "order counts the symbol itself: at least 1"
        assert 0 < alpha <= 1 and beam_width >= 1 and max_chars >= 1, "alpha in (0, 1], positive sizes"
        assert discount is None or discount >= 0, "a discount is a count: at least 0"
        self.order, self.alpha, self.beam_width, self.max_chars = order, alpha, beam_width, max_chars
        self.discount, self.every_length = discount, every_length
        self.powers = [1.0]  # alpha ** j by repeated multiplication, as ngram.js builds it
        for _ in range(order):
            self.powers.append(self.powers[-1] * alpha)
        self.counts: dict[str, dict[str, int]] = {}  # context (0..order-1 symbols) -> next -> count
        self.totals: dict[str, int] = {}
        self.urls = 0
        self._ranked: dict[str, list[tuple[float, str]]] = {}
        for url in urls:
            self.add(url)

    def add(self, url: str) -> None:
        """Count one more canonical URL (the browser calls this on every visit)."""
        symbols = BOS * (self.order - 1) + url + EOS
        for i in range(self.order - 1, len(symbols)):
            x = symbols[i]
            for n in range(self.order):
                ctx = symbols[i - n:i]
                table = self.counts.setdefault(ctx, {})
                table[x] = table.get(x, 0) + 1
                self.totals[ctx] = self.totals.get(ctx, 0) + 1
        self.urls += 1
        self._ranked.clear()

    def prune(self, min_count: int) -> None:
        """Drop every count below min_count, keeping each context's total (c(ctx) above): with stupid
        backoff a kept symbol scores as before and a dropped one backs off as an unseen one would;
        with a discount the dropped counts' share goes to the shorter contexts. A bundle's count
        component keeps most of the mix's gain this way (docs/RESULTS.md); the personal n-gram is
        never pruned. Prune after the last ``add``: a later URL would count a dropped symbol again
        from zero.
        """
        self._keep(lambda ctx, x, c: c >= min_count)

    def keep_commonest(self, symbols: int) -> None:
        """Drop every context and count that involves a symbol outside the ``symbols`` commonest
        (by c("", x)), keeping totals: more pruning, so counts.bin's alphabet fits its 255. Contexts
        stay suffix-closed (a context without a rare symbol has no suffix with one).
        """
        unigrams = self.counts.get("", {})
        kept = set(sorted(unigrams, key=lambda x: (-unigrams[x], x))[:symbols])
        kept.add(BOS)  # the padding of every history, never a counted symbol
        self._keep(lambda ctx, x, c: x in kept and kept.issuperset(ctx))

    def _keep(self, wanted: Callable[[str, str, int], bool]) -> None:
        """Keep the counts c(ctx, x) for which wanted(ctx, x, c) holds, totals as they were; a
        context left without counts goes.
        """
        for ctx in list(self.counts):
            table = {x: c for x, c in self.counts[ctx].items() if wanted(ctx, x, c)}
            if table:
                self.counts[ctx] = table
            else:
                del self.counts[ctx], self.totals[ctx]
        self._ranked.clear()

    def to_bytes(self) -> bytes:
        """The tables as counts.bin (formats/counts.py), what a bundle ships."""
        return counts_format.encode(self.order, self.counts, self.totals, self.urls)

    @classmethod
    def from_bytes(cls, data: bytes, discount: float | None = COUNT_DISCOUNT) -> CharNgramLM:
        """The n-gram of a counts.bin, with this module's beam and length, scoring with the
        discount (None: stupid backoff with this module's alpha).

        :raise formats.counts.CountsFormatError: for bytes ``to_bytes`` did not write.
        """
        order, counts, totals, urls = counts_format.decode(data)
        lm = cls(order=order, discount=discount)
        lm.counts, lm.totals, lm.urls = counts, totals, urls
        return lm

    def entries(self) -> int:
        """How many (context, symbol) counts the model holds: its size."""
        return sum(map(len, self.counts.values()))

    def scores(self, history: str) -> dict[str, float]:
        """S(x | history) for every symbol x seen at all (the rules above)."""
        if self.discount is not None:
            return self._interpolated(history)
        out: dict[str, float] = {}
        for n in range(self.order - 1, -1, -1):
            ctx = history[len(history) - n:] if n else ""
            table = self.counts.get(ctx)
            if table is None:
                continue
            total, power = self.totals[ctx], self.powers[self.order - 1 - n]
            for x, c in table.items():
                if x not in out:
                    out[x] = c / total * power
        return out

    def _interpolated(self, history: str) -> dict[str, float]:
        """S(x | history) by interpolated absolute discounting (the module docstring)."""
        discount = self.discount
        assert discount is not None
        out: dict[str, float] = {}
        weight = 1.0
        for n in range(self.order - 1, -1, -1):
            ctx = history[len(history) - n:] if n else ""
            table = self.counts.get(ctx)
            if table is None:
                continue
            total, kept = self.totals[ctx], 0.0
            for x, c in table.items():
                d = max(c - discount, 0.0)
                out[x] = out.get(x, 0.0) + weight * (d / total)
                kept += d
            weight *= (total - kept) / total
        unigrams = self.counts.get("", {})
        for x in unigrams:
            out[x] += weight / len(unigrams)
        return out

    def score(self, typed: str, suggestion: str) -> float:
        """The score the search gives ``suggestion`` (``typed + fill + text``) had it found it: the
        product of S over the text's symbols, times the S of the symbols that may end it (EOS, "/",
        "?") added in that order; 0 where a symbol was never counted. ``fuse`` scores the network's
        suggestions with it.
        """
        fill, canonical = split_typed(typed)
        history = BOS * (self.order - 1) + canonical
        s = 1.0
        for x in suggestion[len(typed) + len(fill):]:
            s *= self.scores(history).get(x, 0.0)
            history += x
        after, end = self.scores(history), 0.0
        for x in EOS + BOUNDARY_CHARS:
            end += after.get(x, 0.0)
        return s * end

    def _ranked_next(self, history: str) -> list[tuple[float, str]]:
        """Candidates after history, best first (ties by symbol): finishing symbols and the best others."""
        key = history[len(history) - (self.order - 1):] if self.order > 1 else ""
        ranked = self._ranked.get(key)
        if ranked is None:
            ranked, others = [], 0
            for x, s in sorted(self.scores(key).items(), key=lambda item: (-item[1], item[0])):
                if x == EOS or x in BOUNDARY_CHARS:
                    ranked.append((s, x))
                elif others < self.beam_width:
                    ranked.append((s, x))
                    others += 1
            if len(self._ranked) > RANKED_CACHE_SIZE:
                self._ranked.clear()
            self._ranked[key] = ranked
        return ranked

    def complete(self, typed: str, k: int = 5) -> list[str]:
        """Up to k suggestions, best first, each ``typed + fill + generated text``."""
        return [text for text, _ in self.complete_scored(typed, k)]

    def complete_scored(self, typed: str, k: int = 5) -> list[tuple[str, float]]:
        """Like complete, with each suggestion's score (a product of S, merged by addition)."""
        if k <= 0 or not self.urls:
            return []
        fill, canonical = split_typed(typed)
        finished = self._search(canonical, k)
        ranked = sorted(finished.items(), key=lambda item: (-item[1], item[0]))[:k]
        return [(typed + fill + text, score) for text, score in ranked]

    def _search(self, canonical: str, k: int) -> dict[str, float]:
        """Steps 2-3 of the module docstring; returns generated text -> score."""
        history = BOS * (self.order - 1) + canonical
        beams: list[tuple[float, str]] = [(1.0, "")]  # (score, generated text)
        finished: dict[str, float] = {}
        for _ in range(self.max_chars):
            candidates = [(score * s, b, x) for b, (score, text) in enumerate(beams)
                          for s, x in self._ranked_next(history + text)]
            candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
            chosen: list[tuple[float, str]] = []
            for score, b, x in candidates:
                text = beams[b][1]
                if x == EOS or (x in BOUNDARY_CHARS and text):
                    shown = self.every_length or enough(canonical, len(text))
                    if text and not junk(canonical, text) and shown:
                        finished[text] = finished.get(text, 0.0) + score
                    continue
                if junk(canonical, text + x, finished=False):
                    continue
                chosen.append((score, text + x))
                if len(chosen) == self.beam_width:
                    break
            if not chosen:
                break
            beams = chosen
            if len(finished) >= k and beams[0][0] < sorted(finished.values(), reverse=True)[k - 1]:
                break
        return finished


def mix(model: list[tuple[str, float]], personal: list[tuple[str, float]], k: int,
        weight: float = PERSONAL_WEIGHT) -> list[str]:
    """The model's and the personal n-gram's suggestions as one list (``mixSuggestions`` in ngram.js).

    A suggestion-level linear mixture: score = w * exp(model log-prob) + (1 - w) * personal score
    (the model's "log-prob" is ``with_repeats``'s log share where the bundle ships counts),
    a side that did not propose a suggestion adding 0; top k by score, ties by text (code points).
    With no personal suggestion the model's list is returned as it is.
    """
    if not personal:
        return [text for text, _ in model[:k]]
    return [text for text, _ in blend(model, personal, k, weight)]


def blend(logs: list[tuple[str, float]], others: list[tuple[str, float]], k: int,
          weight: float) -> list[tuple[str, float]]:
    """The linear mixture of ``mix`` and ``with_repeats`` (``blend`` in ngram.js): score = w *
    exp(log-prob) + (1 - w) * other score, a side that did not propose a text adding 0; the top k
    (text, score), ties by text.
    """
    score: dict[str, float] = {}
    for text, log_prob in logs:
        score[text] = weight * math.exp(log_prob)
    for text, s in others:
        score[text] = score.get(text, 0.0) + (1 - weight) * s
    return sorted(score.items(), key=lambda item: (-item[1], item[0]))[:k]


def fuse(scored: list[tuple[str, float, float]], k: int,
         weight: float = FUSION_WEIGHT) -> list[tuple[str, float]]:
    """Every suggestion the network or the count component proposed, each scored by both sides, as
    one list of (text, log share), best first, ties by text; ``fuseSuggestions`` in ngram.js.

    ``scored`` holds (text, network log-prob, count score S): ``Completer.log_probs`` and
    ``CharNgramLM.score`` score the texts the other side proposed. A product of experts: log score
    = w * log-prob + (1 - w) * log S (S at least ``COUNT_FLOOR``; a text the network cannot reach
    or gives less than ``FORCED_FLOOR``, log-prob -inf, is dropped), then normalised over the list so
    that the shares sum to 1 and ``mix`` weighs the personal n-gram against them as before. It beat
    the linear mixture of each side's own list by 5-7 % of KSR@3 in both directions across sources
    (docs/RESULTS.md). Returned as logs, as the network's log-probs are.
    """
    logs = [(text, score) for text, log_prob, s in scored
            if (score := weight * log_prob + (1 - weight) * math.log(max(s, COUNT_FLOOR))) > -math.inf]
    if not logs:
        return []
    top, total = max(score for _, score in logs), 0.0
    for _, score in logs:  # left to right as fuseSuggestions adds
        total += math.exp(score - top)
    norm = top + math.log(total)
    return [(text, score - norm) for text, score in sorted(logs, key=lambda item: (-item[1], item[0]))[:k]]


def repeated_words(typed: str, k: int = REPEAT_K) -> list[str]:
    """The word being typed past the host finished as a longer word typed earlier in the same URL
    (``bdnews24.com/bd`` -> ``bdnews24.com/bdnews24``): up to k, the most frequent first, ties by
    text; ``repeatedWords`` in ngram.js.

    A word is a run of ASCII letters and digits; ``REPEAT_TYPED`` of its characters must be typed (as
    typed: a space's ``%20`` is no word), the suggestion must add ``MIN_ADDED_CHARS`` or more and not
    be ``junk`` (``tryit.ht`` -> ``tryit.html5``). A URL names its host and its topics again in
    its path and query, which neither the network nor the counts of other URLs can know: a cache
    component (Kuhn and De Mori 1990) over one URL. Not in the host, where the page completes
    the top suggestion inline.
    """
    fill, canonical = split_typed(typed)
    start = len(canonical.rstrip(WORD_CHARS))
    part, path = canonical[start:], _ANY_SCHEME.sub("", canonical)  # past the host as normalize.js pastHost
    if len(part) < REPEAT_TYPED or not typed.endswith(part) or ("/" not in path and "?" not in path):
        return []
    seen: dict[str, int] = {}
    for word in _WORD.findall(canonical, 0, start):
        if word.startswith(part) and len(word) - len(part) >= MIN_ADDED_CHARS \
                and not junk(canonical, word[len(part):]):
            seen[word] = seen.get(word, 0) + 1
    return [typed + fill + word[len(part):] for word in sorted(seen, key=lambda w: (-seen[w], w))[:k]]


def with_repeats(fused: list[tuple[str, float]], typed: str, k: int,
                 weight: float = REPEAT_WEIGHT) -> list[tuple[str, float]]:
    """``fuse``'s list (log shares) mixed with ``repeated_words`` as one list of (text, log share),
    best first, ties by text; ``withRepeats`` in ngram.js. A linear mixture: share = (1 - w) * fuse's
    share + w / (number of repeats) for a repeat, so the shares still sum to at most 1 for ``mix``.
    A repeat's share is at least w / REPEAT_K, above any threshold tau shipped, so tau never hides
    one. Across sources it saved 2-16 % more keys (docs/RESULTS.md, "the words already typed").
    """
    repeats = repeated_words(typed)
    if not repeats:
        return fused[:k]
    even = [(text, 1 / len(repeats)) for text in repeats]
    return [(text, math.log(share)) for text, share in blend(fused, even, k, 1 - weight)]


class FusedCompleter:
    """A bundle's network mixed with its count component (``fuse``) and with the words already typed
    in the URL (``with_repeats``), as the page's completion worker mixes them (web_client/ngram.js
    ``FusedCompleter``).
    """

    def __init__(self, completer: Completer, counts: CharNgramLM, weight: float = FUSION_WEIGHT):
        self.completer, self.counts, self.weight = completer, counts, weight

    @property
    def threshold(self) -> float:
        """The threshold tau, the network's (runtime/complete.py step 5), applied to both sides."""
        return self.completer.threshold

    @threshold.setter
    def threshold(self, tau: float) -> None:
        self.completer.threshold = tau

    def set_weights(self, weights: dict) -> None:
        """Swap in new global weights; the counts ship once with the bundle and stay."""
        self.completer.set_weights(weights)

    def complete(self, typed: str, k: int = 5) -> list[str]:
        """Up to k suggestions, best first, each starting with ``typed``."""
        return [text for text, _ in self.complete_scored(typed, k)]

    def complete_scored(self, typed: str, k: int = 5) -> list[tuple[str, float]]:
        """The top k of ``fuse`` over max(k, FUSION_K) suggestions from each side, each side's past
        the threshold tau: the network's by its probability given what was typed (runtime/complete.py
        step 5), the counts' by their score S, a product of per-character probabilities given it;
        each side then scores the texts only the other proposed. ``with_repeats`` then mixes in the
        words typed earlier in the URL.
        """
        wide = max(k, FUSION_K)
        network = dict(self.completer.complete_scored(typed, wide))
        counts = {text: s for text, s in self.counts.complete_scored(typed, wide) if s >= self.threshold}
        others = [text for text in counts if text not in network]
        scored = [(text, log_prob, counts[text] if text in counts else self.counts.score(typed, text))
                  for text, log_prob in network.items()]
        log_probs = self.completer.log_probs(typed, others)
        scored += zip(others, log_probs, [counts[text] for text in others], strict=True)
        return with_repeats(fuse(scored, k, self.weight), typed, k)


def open_completer(bundle_dir, **options) -> Completer | FusedCompleter:
    """What the page suggests with for a bundle: its network, fused with its counts.bin if it has one.

    ``options`` go to ``Completer`` (weights, threads, threshold...).
    """
    completer = Completer(bundle_dir, **options)
    bundle = load_bundle(bundle_dir, verify=False)  # Completer verified every file
    if COUNTS_FILE not in bundle.manifest["files"]:
        return completer
    return FusedCompleter(completer, CharNgramLM.from_bytes(bundle.path(COUNTS_FILE).read_bytes()))


class PersonalCompleter:
    """The model's suggestions mixed with a personal n-gram of the user's visits, as the page
    mixes them (client.js; the page then puts up to two visited URLs first, history_index.js).
    """

    def __init__(self, completer: Completer | FusedCompleter, urls: Iterable[str] = (),
                 weight: float = PERSONAL_WEIGHT):
        self.completer, self.ngram, self.weight = completer, CharNgramLM(urls), weight

    def add(self, url: str) -> None:
        """One more visited canonical URL."""
        self.ngram.add(url)

    def complete(self, typed: str, k: int = 5) -> list[str]:
        """Up to k suggestions, best first (``mix`` of the model's k and the n-gram's k)."""
        model = self.completer.complete_scored(typed, k)
        return mix(model, self.ngram.complete_scored(typed, k), k, self.weight)
