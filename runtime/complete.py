"""URL completion by beam search over infer.onnx, with token healing: the reference completer.

web_client/completer.js implements exactly this algorithm; keep the two in step.

1. ``split_typed`` maps the typed text to a canonical prefix (and a scheme ``fill``).
2. Token healing: the prefix is encoded and its last piece backed off, because a typed prefix
   usually ends mid-piece ("githu" is "git"+"hu", but the URL is "git"+"hub.com"). Earlier pieces
   are backed off too while the backed-off bytes are a strict prefix of some vocabulary piece
   ("goo" is "go"+"o", but "google" is one piece). The backed-off bytes become ``pending``: a
   generated piece must start with them (the rest is new text), or be a prefix of them (then it
   consumes them and decoding goes on).
3. Beam search: the context (BOS + remaining pieces) is run once; each step expands every live
   beam by every allowed piece (never pad/unk/bos; EOS only once ``pending`` is consumed and some
   text was generated), scores = beam log-prob + piece log-prob, accumulated in float64. All
   candidates are sorted by score, ties by (beam index, piece id); a beam with pending bytes scores
   only the pieces that could reproduce them (``reproducing``), the others being refused anyway, so
   the walk does not pass hundreds of them. Walking that order, a candidate
   *finishes* when it emits EOS, or when its new text holds a boundary byte ("/" or "?") at
   position >= 1 of the generated text: the suggestion is the text before that boundary, so
   suggestions stop at the end of the host or of the path segment. A finished candidate that
   ``junk`` refuses is dropped, and so is one past the host that adds fewer than
   ``MIN_ADDED_CHARS`` characters (``enough``: the search then goes on to k others), and a
   live one that can only end as junk. Finished
   candidates with the same text merge (log-sum-exp).
   The walk stops once ``beam_width`` live beams are taken. The model's output after a piece
   sequence (BOS, the context, the generated pieces) is cached, least recently used out after
   ``CONTEXT_CACHE_SIZE``: the context and the beams that an earlier keystroke's search already
   ran (typing on from "githu" to "github" takes many of the same pieces) are not run again.
   With a threshold tau (step 5), a taken live beam that scores below ``log(tau) + healed`` is
   dropped: scores only fall as pieces are added, so it could only end below the threshold, or
   lift an equal text's merged score (this loses a little of such mass: 36 of 1,162 lists
   changed, KSR@3 0.3168 -> 0.3167 on the shipped model's validation URLs, for 3 x fewer model
   rows a keystroke).
4. Stop when no beam is live, after ``max_steps`` steps, or when ``k`` suggestions are finished
   and the best live beam scores below the k-th. Return the top k by score, ties by text;
   a suggestion is ``typed + fill + generated text``. Non-UTF-8 suggestions are dropped.
5. The threshold tau (the manifest's ``completion.min_probability``, docs/FORMAT.md): a
   suggestion is shown only if ``score - healed >= log(tau)``. A score is the log-probability of
   the backed-off ``pending`` bytes *and* the new text after the remaining pieces, so a prefix
   typed mid-piece ("githu") would score low for the mere cut; ``healed`` is the log of the
   probability mass that the first step gives to pieces that could reproduce ``pending`` (those
   that start with it or are a prefix of it; 0 when nothing is pending), summed in piece-id
   order with log-add. score - healed is then about P(suggestion | typed) (a lower bound: a
   prefix piece may not go on to reproduce the rest). Tau 0 shows everything. The list is ranked
   by score, so the threshold keeps a prefix of it.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from formats.bundle import StateSpec, load_bundle, min_probability
from formats.urls import split_typed
from runtime.session import open_session, open_tokenizer

BOUNDARY_BYTES = b"/?"
# Top-level domains that are never a second-level label before another one ("x.com.com" is junk,
# "x.com.br" is not): the original generic TLDs plus info and biz.
GENERIC_TLDS = frozenset({"com", "net", "org", "edu", "gov", "mil", "int", "info", "biz"})
HTML_EXTENSION = re.compile(r"\.html?", re.IGNORECASE | re.ASCII)  # rule 4: .html or else .htm
EXTENSION_MAY_PRECEDE = "#;"  # a fragment or a path parameter (;jsessionid=...) may follow it
BEAM_WIDTH = 8
MAX_STEPS = 16
CONTEXT_CACHE_SIZE = 512
# log_probs stops teacher-forcing a text once the network gives its pieces less than this (past the
# healed context, as the threshold) and scores it -inf: a measured cut, not an exact one. Such a text
# rarely wins the product fuse, but can where the counts like it a lot; the long tails of one-row
# steps it saves were a slow keystroke's biggest part, and keys saved did not drop (docs/RESULTS.md).
FORCED_FLOOR = 1e-6
# Past the host a suggestion must add at least this many characters to what was typed. Accepting
# one takes a key, so one a character longer saves none and takes the slot of one that could
# (docs/RESULTS.md, "suggestions one character long"). While the host is typed the page completes
# its top guess inline and Enter visits it, so there google.co -> google.com does save its key.
MIN_ADDED_CHARS = 2


@dataclass
class _Beam:
    score: float          # log-probability of the pieces generated so far
    log_probs: np.ndarray  # (V,) next-piece log-probs after this beam
    state: np.ndarray     # the model's state after this beam: one row of StateSpec
    text: bytes           # generated bytes beyond the canonical prefix
    pending: bytes        # backed-off prefix bytes still to be reproduced
    pieces: tuple         # every piece after BOS: the context's, then the generated ones


def _log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without overflow."""
    high, low = (a, b) if a >= b else (b, a)
    return high + math.log1p(math.exp(low - high))


def _junk_bytes(prefix: bytes, text: bytes, finished: bool = True) -> bool:
    """The junk rule over byte strings, one char per byte (the rules look at ASCII only)."""
    return junk(prefix.decode("latin-1"), text.decode("latin-1"), finished)


def _enough_bytes(prefix: bytes, text: bytes) -> bool:
    """``enough`` over the search's byte strings: a character of text is a byte that does not
    continue a UTF-8 sequence (past the host there is no fill, so prefix is all that was typed).
    """
    return enough(prefix.decode("latin-1"), sum((byte & 0xC0) != 0x80 for byte in text))


def _ends_in_generic_tld(host: str) -> bool:
    """Whether the last dot-separated label of host is one of GENERIC_TLDS (and host has a dot)."""
    return "." in host and host.rsplit(".", 1)[1] in GENERIC_TLDS


def _two_letters(label: str) -> bool:
    """Whether label is two ASCII letters (a country-code TLD's shape)."""
    return len(label) == 2 and label.isascii() and label.isalpha()


def junk(canonical: str, text: str, finished: bool = True) -> bool:
    """Whether the suggestion canonical + text is junk that no completer shows (completer.js: junk).

    Only what was generated can be junk, so each rule needs its offending character in ``text``.
    A generic TLD is one of GENERIC_TLDS; a label is a dot-separated part of the host.
    1. After a complete typed host only a path may follow: canonical is a bare host ending in a
       generic TLD and text goes on with the host (``github.com`` -> ``github.com.br``,
       ``google.coma.com``; type the "." for ``google.com.br``).
    2. No generic TLD inside a host: a generic-TLD label that is neither the host's first nor its
       last label, unless a two-letter last label follows it (``google.com.com``,
       ``google.com.google.com`` are junk; ``google.com.br``, ``bbc.co.uk``, ``info.cern.ch`` are not).
    3. No TLD in the path: a path segment that starts with "." or ends in "." and a generic TLD
       (``github.com/.net``, ``en.wikipedia.org/a.org``, ``/wikipedia.org``); text after "?" is
       not looked at (``share?u=x.com`` is fine).
    4. ``.html`` (else ``.htm``) ends its path segment: a generated character after it other than
       "#" or ";" is junk (``sys.html.html``, ``sys.htmli``, ``a.htm5``; ``a.htm`` -> ``a.html`` is
       fine). A page that once visited ``json.html.html`` because the model's ``.html`` was
       completed inline taught the federation to suggest it.
    Rule 1 and rule 3's first half hold for every extension of text too, so a live beam is
    dropped as soon as they do (``finished=False`` checks only those); the rest judge finished text.
    The rules look only at ASCII characters, so a byte string (one char per byte, as the model's
    completers hold text) and a code-point string give the same answer.
    """
    full, start = canonical + text, len(canonical)
    ends = [i for i in (full.find("/"), full.find("?")) if i >= 0]
    host_end = min(ends) if ends else len(full)
    if start <= host_end and text[:1] not in ("", "/", "?") and _ends_in_generic_tld(canonical):
        return True
    labels = full[:host_end].split(".")
    position = 0  # where the current label starts
    for i, label in enumerate(labels[:-1]):
        dot = position + len(label)  # the "." after this label
        if finished and i > 0 and label in GENERIC_TLDS and dot >= start \
                and not (i == len(labels) - 2 and _two_letters(labels[-1])):
            return True
        position = dot + 1
    query = full.find("?", host_end)
    position = host_end + 1  # where the current path segment starts
    for segment in full[host_end:len(full) if query < 0 else query].split("/")[1:]:
        if segment.startswith(".") and position >= start:
            return True
        if finished and _ends_in_generic_tld(segment) and position + segment.rfind(".") >= start:
            return True
        if finished and any(m.end() < len(segment) and segment[m.end()] not in EXTENSION_MAY_PRECEDE
                            and position + m.end() >= start for m in HTML_EXTENSION.finditer(segment)):
            return True
        position += len(segment) + 1
    return False


def enough(canonical: str, added: int) -> bool:
    """Whether a suggestion that adds ``added`` characters (code points) to a typed text whose
    canonical form is ``canonical`` may be shown: it is still in the host (no "/" or "?"), or it
    adds MIN_ADDED_CHARS or more. completer.js: enough. Every search drops the texts it refuses:
    the network's here, the n-grams' (runtime/ngram.py) but for the yardstick's.
    """
    return ("/" not in canonical and "?" not in canonical) or added >= MIN_ADDED_CHARS


def shown(ranked: list[tuple[str, float]], healed: float, threshold: float) -> list[tuple[str, float]]:
    """The suggestions of a ranked list that pass the threshold tau (step 5): a prefix of the list."""
    if threshold <= 0:
        return ranked
    floor = math.log(threshold)
    return [(text, score) for text, score in ranked if score - healed >= floor]


class Completer:
    """Suggest full-URL completions for a typed prefix with a bundle's infer.onnx."""

    def __init__(self, bundle_dir, weights: dict | None = None, beam_width: int = BEAM_WIDTH,
                 max_steps: int = MAX_STEPS, threads: int = 1, threshold: float | None = None):
        """threshold: tau of step 5; None reads the bundle's (what the page uses)."""
        bundle = load_bundle(bundle_dir)
        self.threshold = min_probability(bundle.manifest) if threshold is None else threshold
        self.session = open_session(bundle, "infer", threads)
        self.io = bundle.manifest["graphs"]["infer"]
        self.state: StateSpec = bundle.state  # all the completer knows about the model's state
        self.config = bundle.manifest["config"]
        self.tokenizer = open_tokenizer(bundle)
        self.weights = bundle.load_weights() if weights is None else weights
        self.beam_width, self.max_steps = beam_width, max_steps
        self.blocked = np.zeros(self.tokenizer.vocab_size, dtype=bool)  # never generated
        for key in ("pad_id", "unk_id", "bos_id"):
            self.blocked[bundle.manifest["tokenizer"][key]] = True
        self.eos_id = self.config["eos_id"]
        self.piece_prefixes = {piece[:end] for piece in self.tokenizer.piece_bytes
                               for end in range(1, len(piece))}
        self._contexts: OrderedDict[tuple, tuple] = OrderedDict()
        self._pending_pieces: dict[bytes, np.ndarray] = {}  # pending bytes -> reproducing(pending)

    def set_weights(self, weights: dict) -> None:
        """Swap in new global weights (a new round's model) and forget cached contexts."""
        self.weights = weights
        self._contexts.clear()

    def step(self, tokens: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One infer.onnx call: tokens (B,), a B-row state -> log-probs (B, V), new state."""
        feed = {self.io["tokens_input"]: tokens.astype(np.int64), self.state.input: state, **self.weights}
        log_probs, new_state = self.session.run([self.io["log_probs_output"], self.state.output], feed)
        return log_probs, new_state

    def cached(self, pieces: tuple) -> tuple[np.ndarray, np.ndarray] | None:
        """(log-probs (V,), one-row state) after BOS + pieces if still cached (most recent use)."""
        if pieces in self._contexts:
            self._contexts.move_to_end(pieces)
            return self._contexts[pieces]
        return None

    def remember(self, pieces: tuple, log_probs: np.ndarray, state: np.ndarray) -> None:
        """Cache the model's output after BOS + pieces; the least recently used entry goes."""
        self._contexts[pieces] = (log_probs, state)
        if len(self._contexts) > CONTEXT_CACHE_SIZE:
            self._contexts.popitem(last=False)

    def context(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(log-probs (V,), one-row state) after BOS + ids, reusing the longest cached prefix."""
        key = tuple(ids)
        hit = self.cached(key)
        if hit is not None:
            return hit
        if ids:
            _, state = self.context(ids[:-1])
            log_probs, state = self.step(np.array([ids[-1]]), state)
        else:
            log_probs, state = self.step(np.array([self.config["bos_id"]]), self.state.initial(1))
        self.remember(key, log_probs[0], state)
        return log_probs[0], state

    def heal(self, ids: list[int]) -> tuple[list[int], bytes]:
        """Back off the last piece, and earlier ones while a longer piece could span the cut."""
        pending = b""
        while ids:
            candidate = self.tokenizer.piece_bytes[ids[-1]] + pending
            if pending and candidate not in self.piece_prefixes:
                break
            ids, pending = ids[:-1], candidate
        return ids, pending

    def complete(self, typed: str, k: int = 5) -> list[str]:
        """Up to k suggestions, best first, each starting with ``typed``."""
        return [text for text, _ in self.complete_scored(typed, k)]

    def complete_scored(self, typed: str, k: int = 5) -> list[tuple[str, float]]:
        """Like complete, with each suggestion's log-probability (what ``runtime.ngram.mix`` weighs)."""
        return shown(*self.ranked(typed, k), self.threshold)

    def ranked(self, typed: str, k: int) -> tuple[list[tuple[str, float]], float]:
        """The top k (suggestion, log-probability) before the threshold, and ``healed`` (step 5)."""
        if k <= 0:
            return [], 0.0
        fill, canonical = split_typed(typed)
        ids = self.tokenizer.encode(canonical) if canonical else []
        ids, pending = self.heal(ids)
        log_probs, state = self.context(ids)
        healed = self.healed(log_probs, pending)
        floor = math.log(self.threshold) + healed if self.threshold > 0 else -math.inf
        finished = self._search(_Beam(0.0, log_probs, state, b"", pending, tuple(ids)), k,
                                canonical.encode("utf-8"), floor)
        ranked = sorted(finished.items(), key=lambda item: (-item[1], item[0]))
        suggestions = []
        for text, score in ranked:
            try:
                suggestions.append((typed + fill + text.decode("utf-8"), score))
            except UnicodeDecodeError:
                continue
            if len(suggestions) == k:
                break
        return suggestions, healed

    def log_probs(self, typed: str, suggestions: list[str]) -> list[float]:
        """A score on ``ranked``'s scale for each suggestion (``typed + fill + text``), found by the
        search or not: the log-probability, after the healed context of ``typed``, of the pieces
        BPE gives the backed-off bytes and the text, then of an ending: a piece that starts with
        "/" (or "?") after the text, the last pieces backed off as in step 1 so one may span the
        cut, or EOS. One path an ending, where the search may merge several, so about its merged
        score. ``runtime.ngram.fuse`` scores the count component's suggestions with it. -inf where
        the backed-off bytes split a character, or where every ending's pieces fall below
        ``FORCED_FLOOR`` (past the healed context): such a path is not run further.
        """
        if not suggestions:  # the common keystroke: the search found every count suggestion
            return []
        fill, canonical = split_typed(typed)
        root, pending = self.heal(self.tokenizer.encode(canonical) if canonical else [])
        endings: list[list[tuple[list[int], bytes | None]] | None] = []
        for suggestion in suggestions:
            try:
                rest = (pending + suggestion[len(typed) + len(fill):].encode("utf-8")).decode("utf-8")
            except UnicodeDecodeError:
                endings.append(None)
                continue
            ends: list[tuple[list[int], bytes | None]] = []
            for boundary in BOUNDARY_BYTES.decode():
                ids, spanning = self.heal(self.tokenizer.encode(rest + boundary))
                ends.append((root + ids, spanning))
            endings.append(ends + [(root + self.tokenizer.encode(rest), None)])
        floor = math.log(FORCED_FLOOR) + self.healed(self.context(root)[0], pending)
        forced = self._force([path for ends in endings if ends for path, _ in ends], root, floor)
        return [-math.inf if ends is None else self._ends_score(ends, forced, floor) for ends in endings]

    def _ends_score(self, ends: list[tuple[list[int], bytes | None]],
                    forced: dict[tuple, tuple[float, np.ndarray | None]], floor: float) -> float:
        """Log of the summed probabilities of the endings (path, bytes the next piece starts with,
        or None for EOS), each path's pieces as ``_force`` scored them; a path that fell below
        ``floor`` adds nothing.
        """
        total = -math.inf
        for path, spanning in ends:
            log_prob, after = forced.get(tuple(path), (-math.inf, None))
            if log_prob < floor or after is None:
                continue
            if spanning is None:
                last = float(after[self.eos_id])
            else:
                last = -math.inf
                for piece in self.reproducing(spanning):  # ascending, as completer.js adds them
                    if not self.blocked[piece] and self.tokenizer.piece_bytes[piece].startswith(spanning):
                        last = _log_add(last, float(after[piece]))
            if last > -math.inf:
                total = _log_add(total, log_prob + last)
        return total

    def _force(self, paths: list[list[int]], root: list[int],
               floor: float) -> dict[tuple, tuple[float, np.ndarray | None]]:
        """Teacher-force every path past ``root`` (a prefix of each): {prefix: (log-probability of
        its pieces past root, the model's next-piece log-probs after it)} for every prefix reached;
        one below ``floor`` goes no further and is not run (None). What the cache lacks runs in one
        batched step a depth at a time (``_advance``), not a step a piece; the outputs are kept here,
        so that the cache evicting them mid-call costs nothing.
        """
        outputs = {tuple(root): self.context(root)}
        forced: dict[tuple, tuple[float, np.ndarray | None]] = {tuple(root): (0.0, outputs[tuple(root)][0])}
        known = [len(root)] * len(paths)  # each path's pieces in forced so far: forced only grows
        for _ in range(max(map(len, paths), default=0) - len(root)):
            beams: list[_Beam] = []
            chosen = []
            for i, ids in enumerate(paths):
                while known[i] < len(ids) and tuple(ids[:known[i] + 1]) in forced:
                    known[i] += 1
                prefix = tuple(ids[:known[i]])
                if known[i] == len(ids) or prefix not in outputs:  # done, below the floor, or in this batch
                    continue
                log_probs, state = outputs[prefix]
                piece = ids[known[i]]
                key, log_prob = prefix + (piece,), forced[prefix][0] + float(log_probs[piece])
                hit = self.cached(key) if log_prob >= floor else None
                forced[key] = (log_prob, None if hit is None else hit[0])
                if hit is not None:
                    outputs[key] = hit
                elif log_prob >= floor:
                    beams.append(_Beam(0.0, log_probs, state, b"", b"", prefix))
                    chosen.append((len(beams) - 1, piece, 0.0, b"", b""))
            for beam in self._advance(beams, chosen) if beams else []:
                outputs[beam.pieces] = (beam.log_probs, beam.state)
                forced[beam.pieces] = (forced[beam.pieces][0], beam.log_probs)
        return forced

    def healed(self, log_probs: np.ndarray, pending: bytes) -> float:
        """Log of the first step's mass on pieces that could reproduce pending (step 5); 0 if none pending."""
        if not pending:
            return 0.0
        mass = -math.inf
        for piece in self.reproducing(pending):
            if not self.blocked[piece]:
                mass = _log_add(mass, float(log_probs[piece]))
        return mass

    def reproducing(self, pending: bytes) -> np.ndarray:
        """The pieces a beam with ``pending`` bytes may take, ascending: those that start with them
        or are a prefix of them (never EOS nor an empty piece). Cached per pending: a search asks for
        the same few again and again.
        """
        pieces = self._pending_pieces.get(pending)
        if pieces is None:
            pieces = np.array([piece for piece, piece_bytes in enumerate(self.tokenizer.piece_bytes)
                               if piece_bytes and piece != self.eos_id
                               and (piece_bytes.startswith(pending) or pending.startswith(piece_bytes))],
                              dtype=np.int64)
            if len(self._pending_pieces) >= CONTEXT_CACHE_SIZE:
                self._pending_pieces.clear()
            self._pending_pieces[pending] = pieces
        return pieces

    def _search(self, root: _Beam, k: int, prefix: bytes, floor: float) -> dict[bytes, float]:
        """The beam search of step 3-4 in the module docstring (live beams below floor dropped);
        returns text -> log-prob.
        """
        beams = [root]
        finished: dict[bytes, float] = {}
        for _ in range(self.max_steps):
            scores = np.stack([b.score + b.log_probs.astype(np.float64) for b in beams])  # (B, V)
            scores[:, self.blocked] = -np.inf
            for row, beam in enumerate(beams):  # what _extend would refuse -inf, so the walk never reaches it
                if beam.pending:
                    pieces = self.reproducing(beam.pending)
                    kept = scores[row, pieces]
                    scores[row] = -np.inf
                    scores[row, pieces] = kept
            order = np.argsort(-scores, axis=None, kind="stable")
            chosen = []
            for flat in order:
                beam_index, piece = divmod(int(flat), scores.shape[1])
                score = scores[beam_index, piece]
                if score == -np.inf:
                    break
                outcome = self._extend(beams[beam_index], piece, prefix)
                if outcome is None:
                    continue
                text, pending, done = outcome
                if done:
                    finished[text] = _log_add(finished[text], score) if text in finished else score
                else:
                    chosen.append((beam_index, piece, score, text, pending))
                    if len(chosen) == self.beam_width:
                        break
            chosen = [c for c in chosen if c[2] >= floor]
            if not chosen:
                break
            beams = self._advance(beams, chosen)
            if len(finished) >= k and beams[0].score < sorted(finished.values(), reverse=True)[k - 1]:
                break
        return finished

    def _extend(self, beam: _Beam, piece: int, prefix: bytes) -> tuple[bytes, bytes, bool] | None:
        """(text, pending, finished) after appending piece to beam, or None if not allowed."""
        if piece == self.eos_id:
            if beam.pending or not beam.text or _junk_bytes(prefix, beam.text) \
                    or not _enough_bytes(prefix, beam.text):
                return None
            return beam.text, b"", True
        piece_bytes = self.tokenizer.piece_bytes[piece]
        if beam.pending:
            if piece_bytes.startswith(beam.pending):
                new = piece_bytes[len(beam.pending):]
            elif beam.pending.startswith(piece_bytes):
                return beam.text, beam.pending[len(piece_bytes):], False
            else:
                return None
        else:
            new = piece_bytes
        text = beam.text + new
        for position in range(max(1, len(beam.text)), len(text)):
            if text[position] in BOUNDARY_BYTES:
                done = text[:position]
                shown = not _junk_bytes(prefix, done) and _enough_bytes(prefix, done)
                return (done, b"", True) if shown else None
        return None if _junk_bytes(prefix, text, finished=False) else (text, b"", False)

    def _advance(self, beams: list[_Beam], chosen: list[tuple]) -> list[_Beam]:
        """The chosen (beam, piece) pairs as beams: cached piece sequences (an earlier keystroke's
        search often took the same ones) are reused, the rest run in one batched infer step.
        """
        keys = [beams[b].pieces + (piece,) for b, piece, _, _, _ in chosen]
        outputs = {i: hit for i, key in enumerate(keys) if (hit := self.cached(key)) is not None}
        missing = [i for i in range(len(chosen)) if i not in outputs]
        if missing:
            state = self.state.join([beams[chosen[i][0]].state for i in missing])
            log_probs, new_state = self.step(np.array([chosen[i][1] for i in missing]), state)
            for row, i in enumerate(missing):
                outputs[i] = (log_probs[row], self.state.row(new_state, row))
                self.remember(keys[i], *outputs[i])
        return [_Beam(score, outputs[i][0], outputs[i][1], text, pending, keys[i])
                for i, (_, _, score, text, pending) in enumerate(chosen)]
