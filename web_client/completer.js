/**
 * URL completion by beam search with token healing: runtime/complete.py's algorithm, step for step.
 *
 * Read that module's docstring for the algorithm; this file keeps its names (context, heal,
 * search, extend, advance) and its tie-breaking: candidates in (score desc, beam, piece) order,
 * scores summed in float64, results ranked by (score desc, text bytes). Byte strings are JS
 * strings with one char per byte, so startsWith, slicing and < behave like Python bytes.
 * No onnxruntime here: the worker passes in `step`, one infer.onnx call. All this file knows of the
 * model's recurrent state is the manifest's description of it (graphs.infer.state, docs/FORMAT.md).
 */

import { BEAM_WIDTH, CONTEXT_CACHE_ENTRIES, FORCED_FLOOR, MAX_STEPS, MIN_ADDED_CHARS } from "./constants.js";
import { splitTyped } from "./normalize.js";

const BOUNDARY_BYTES = "/?";
/** Top-level domains that are never a second-level label before another (runtime/complete.py). */
const GENERIC_TLDS = new Set(["com", "net", "org", "edu", "gov", "mil", "int", "info", "biz"]);
const HTML_EXTENSION = /\.html?/gi; // rule 4: .html or else .htm (ASCII letters only, as in Python)
const EXTENSION_MAY_PRECEDE = "#;"; // a fragment or a path parameter (;jsessionid=...) may follow it
const utf8 = new TextDecoder("utf-8", { fatal: true });
const utf8Encoder = new TextEncoder();

/** Whether host's last dot-separated label is one of GENERIC_TLDS (and host has a dot). */
function endsInGenericTld(host) {
  const dot = host.lastIndexOf(".");
  return dot >= 0 && GENERIC_TLDS.has(host.slice(dot + 1));
}

/**
 * Whether the suggestion canonical + text is junk that no completer shows: runtime/complete.py's
 * `junk`, rule for rule (its docstring has them). Looks at ASCII only, so byte strings and
 * ordinary strings give the same answer.
 * @param {string} canonical what was typed, canonical
 * @param {string} text what was generated
 * @param {boolean} [finished] false: only the rules that every extension of text would break too
 */
export function junk(canonical, text, finished = true) {
  const full = canonical + text, start = canonical.length;
  const ends = [full.indexOf("/"), full.indexOf("?")].filter((i) => i >= 0);
  const hostEnd = ends.length ? Math.min(...ends) : full.length;
  if (start <= hostEnd && text !== "" && !BOUNDARY_BYTES.includes(text[0]) && endsInGenericTld(canonical)) return true;
  const labels = finished ? full.slice(0, hostEnd).split(".") : []; // only finished texts have rules here
  let position = 0; // where the current label starts
  for (let i = 0; i < labels.length - 1; i++) {
    const dot = position + labels[i].length; // the "." after this label
    if (i > 0 && GENERIC_TLDS.has(labels[i]) && dot >= start
        && !(i === labels.length - 2 && /^[A-Za-z]{2}$/.test(labels[labels.length - 1]))) return true;
    position = dot + 1;
  }
  const query = full.indexOf("?", hostEnd);
  position = hostEnd + 1; // where the current path segment starts
  for (const segment of full.slice(hostEnd, query < 0 ? full.length : query).split("/").slice(1)) {
    if (segment.startsWith(".") && position >= start) return true;
    if (finished && endsInGenericTld(segment) && position + segment.lastIndexOf(".") >= start) return true;
    for (const m of finished ? segment.matchAll(HTML_EXTENSION) : []) {
      const after = m.index + m[0].length;
      if (after < segment.length && !EXTENSION_MAY_PRECEDE.includes(segment[after]) && position + after >= start) return true;
    }
    position += segment.length + 1;
  }
  return false;
}

/**
 * Whether a suggestion that adds `added` characters (code points, as Python's len) to a typed text
 * whose canonical form is `canonical` may be shown: it is still in the host (no "/" or "?", where
 * main.js completes the top guess inline), or it adds MIN_ADDED_CHARS or more (runtime/complete.py
 * enough). Every search drops the texts it refuses: the network's here, the n-grams' in ngram.js.
 * @param {string} canonical
 * @param {number} added
 */
export function enough(canonical, added) {
  return !/[/?]/.test(canonical) || added >= MIN_ADDED_CHARS;
}

/**
 * enough over the search's byte strings (one char per byte): a character of text is a byte that
 * does not continue a UTF-8 sequence; past the host there is no fill, so prefix is all that was
 * typed (runtime/complete.py _enough_bytes).
 */
function enoughBytes(prefix, text) {
  let added = 0;
  for (let i = 0; i < text.length; i++) if ((text.charCodeAt(i) & 0xc0) !== 0x80) added++;
  return enough(prefix, added);
}

/** log(exp(a) + exp(b)) without overflow. */
function logAdd(a, b) {
  const [high, low] = a >= b ? [a, b] : [b, a];
  return high + Math.log1p(Math.exp(low - high));
}

/** Python-style strict UTF-8 decoding of a byte string; null if it is not valid UTF-8. */
function decodeBytes(bytes) {
  try {
    return utf8.decode(Uint8Array.from(bytes, (ch) => ch.charCodeAt(0)));
  } catch {
    return null;
  }
}

/**
 * The manifest's description of the state infer.onnx carries (graphs.infer.state).
 * @typedef {{input: string, output: string, shape: Array<number|string>, batch_axis: number,
 *            dtype: string, init: string}} StateSpec
 */

/**
 * How a state's flat C-order data splits into rows: `outer` blocks (dims before the batch axis) of
 * `inner` values (dims after it) per row. Throws unless the state is one this completer can hold.
 * @param {StateSpec} spec
 * @returns {{outer: number, inner: number, rowSize: number}}
 */
export function stateLayout(spec) {
  if (!spec) throw new Error("the manifest has no graphs.infer.state (a bundle or server older than this page)");
  const axis = spec.batch_axis;
  const sizes = spec.shape.filter((_, i) => i !== axis);
  if (spec.shape[axis] !== "batch" || !sizes.every((d) => Number.isInteger(d) && Number(d) > 0)) {
    throw new Error(`state shape [${spec.shape}] needs "batch" at batch_axis ${axis} and positive sizes elsewhere`);
  }
  if (spec.dtype !== "float32" || spec.init !== "zeros") {
    throw new Error(`state ${spec.dtype} initialised with ${spec.init}: only float32 zeros are supported`);
  }
  const product = (dims) => dims.reduce((a, b) => a * Number(b), 1);
  const outer = product(spec.shape.slice(0, axis)), inner = product(spec.shape.slice(axis + 1));
  return { outer, inner, rowSize: outer * inner };
}

/**
 * The concrete shape of a state for `rows` rows.
 * @param {StateSpec} spec
 * @param {number} rows
 * @returns {number[]}
 */
export function stateDims(spec, rows) {
  return spec.shape.map((d, i) => (i === spec.batch_axis ? rows : Number(d)));
}

/**
 * The threshold tau of a manifest, `completion.min_probability` (formats/bundle.py min_probability).
 * @param {object} manifest
 * @returns {number} in [0, 1]; 0 (show every suggestion) when the manifest has none
 */
export function minProbability(manifest) {
  const section = "completion" in manifest ? manifest.completion : {};
  const isObject = typeof section === "object" && section !== null && !Array.isArray(section);
  const tau = isObject ? ("min_probability" in section ? section.min_probability : 0) : null;
  if (typeof tau !== "number" || !(tau >= 0 && tau <= 1)) {
    throw new Error(`manifest completion.min_probability must be a number in [0, 1], got ${JSON.stringify(tau)}`);
  }
  return tau;
}

/**
 * The first `count` flat indices with a score that come after (score `lastScore`, index `lastIndex`)
 * in the candidate order (score desc, then index), in that order. One pass with an insertion into
 * a short sorted list: most candidates are rejected by one comparison with its last entry.
 */
function nextCandidates(scores, lastScore, lastIndex, count) {
  const best = [];
  for (let i = 0; i < scores.length; i++) {
    const score = scores[i];
    if (score === -Infinity || score > lastScore || (score === lastScore && i <= lastIndex)) continue;
    if (best.length === count && !(score > scores[best[count - 1]])) continue; // ties: the earlier index first
    let low = 0, high = best.length; // insert before the first entry that scores below
    while (low < high) {
      const mid = (low + high) >> 1;
      if (scores[best[mid]] >= score) low = mid + 1;
      else high = mid;
    }
    best.splice(low, 0, i);
    if (best.length > count) best.pop();
  }
  return best;
}

/**
 * Flat candidate indices, best first: score desc, then index (numpy's stable argsort). Lazily, in
 * growing chunks: a step's walk usually stops after a few dozen of the beams x vocabulary.
 */
export function* candidateOrder(scores) {
  let lastScore = Infinity, lastIndex = -1;
  for (let count = 64; ; count *= 4) {
    const chunk = nextCandidates(scores, lastScore, lastIndex, count);
    yield* chunk;
    if (chunk.length < count) return;
    lastIndex = chunk[chunk.length - 1];
    lastScore = scores[lastIndex];
  }
}

export class Completer {
  /**
   * @param {object} options
   * @param {import("./tokenizer.js").Tokenizer} options.tokenizer
   * @param {(tokens: number[], state: Float32Array) => Promise<{logProbs: Float32Array, state: Float32Array}>}
   *   options.step one infer.onnx call for tokens.length rows; state has stateDims(options.state, rows)
   * @param {{bos_id: number, eos_id: number}} options.config
   * @param {StateSpec} options.state the manifest's state description
   * @param {number[]} options.blockedIds pieces never generated (pad, unk, bos)
   * @param {number} [options.threshold] tau (minProbability of the manifest); 0 shows everything
   */
  constructor({ tokenizer, step, config, state, blockedIds, threshold = 0 }) {
    this.tokenizer = tokenizer;
    this.threshold = threshold;
    this.step = step;
    this.config = config;
    this.layout = stateLayout(state);
    this.vocabSize = tokenizer.pieceBytes.length;
    this.blocked = blockedIds;
    this.piecePrefixes = new Set();
    for (const piece of tokenizer.pieceBytes) {
      for (let end = 1; end < piece.length; end++) this.piecePrefixes.add(piece.slice(0, end));
    }
    this.contexts = new Map(); // LRU: insertion order, oldest first
    /** @type {Map<string, Int32Array>} pending bytes -> reproducing(pending) */
    this.pendingPieces = new Map();
  }

  /** {logProbs, state} after BOS + ids, reusing the longest cached prefix. */
  async context(ids) {
    let known = ids.length;
    while (known >= 0 && !this.contexts.has(ids.slice(0, known).join())) known--;
    let entry = known >= 0 ? this.cached(ids.slice(0, known).join()) : null;
    for (let n = known + 1; n <= ids.length; n++) {
      const token = n === 0 ? this.config.bos_id : ids[n - 1];
      const { logProbs, state } = await this.step([token], entry ? entry.state : new Float32Array(this.layout.rowSize));
      entry = { logProbs, state };
      this.remember(ids.slice(0, n).join(), entry);
    }
    return /** @type {{logProbs: Float32Array, state: Float32Array}} */ (entry);
  }

  /** The cached {logProbs, state} after BOS + the pieces of `key` (a comma-joined list), now most recent. */
  cached(key) {
    const entry = this.contexts.get(key);
    if (entry) this.remember(key, entry);
    return entry;
  }

  /** Cache the model's output after BOS + the pieces of `key`; the least recently used entry goes. */
  remember(key, entry) {
    this.contexts.delete(key);
    this.contexts.set(key, entry);
    if (this.contexts.size > CONTEXT_CACHE_ENTRIES) this.contexts.delete(this.contexts.keys().next().value);
  }

  /** Back off the last piece, and earlier ones while a longer piece could span the cut. */
  heal(ids) {
    let kept = ids.length, pending = "";
    while (kept > 0) {
      const candidate = this.tokenizer.pieceBytes[ids[kept - 1]] + pending;
      if (pending && !this.piecePrefixes.has(candidate)) break;
      kept--;
      pending = candidate;
    }
    return { ids: ids.slice(0, kept), pending };
  }

  /** Up to k suggestions, best first, each starting with `typed`. */
  async complete(typed, k) {
    return (await this.completeScored(typed, k)).map(([text]) => text);
  }

  /**
   * Like complete, with each suggestion's log-probability (what ngram.js mixSuggestions weighs).
   * @returns {Promise<Array<[string, number]>>}
   */
  async completeScored(typed, k) {
    if (k <= 0) return [];
    const { fill, canonical } = splitTyped(typed);
    const { ids, pending } = this.heal(canonical ? this.tokenizer.encode(canonical) : []);
    const { logProbs, state } = await this.context(ids);
    const prefix = String.fromCharCode(...utf8Encoder.encode(canonical)); // bytes, one char each
    const healed = this.threshold > 0 ? this.healed(logProbs, pending) : 0;
    const floor = this.threshold > 0 ? Math.log(this.threshold) + healed : -Infinity;
    const root = { score: 0, logProbs, state, text: "", pending, pieces: ids };
    const finished = await this.search(root, k, prefix, floor);
    const ranked = [...finished].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    /** @type {Array<[string, number]>} */
    const suggestions = [];
    for (const [text, score] of ranked) {
      if (this.threshold > 0 && score - healed < Math.log(this.threshold)) break;
      const decoded = decodeBytes(text);
      if (decoded === null) continue;
      suggestions.push([typed + fill + decoded, score]);
      if (suggestions.length === k) break;
    }
    return suggestions;
  }

  /**
   * A score on completeScored's scale for each suggestion (typed + fill + text), found by the
   * search or not (runtime/complete.py log_probs): the pieces BPE gives the backed-off bytes and
   * the text, then an ending: a piece starting with "/" (or "?") after the text, its last pieces
   * backed off so one may span the cut, or EOS. The page's fusion scores the count component's
   * suggestions with it (ngram.js FusedCompleter, in the completion worker). -Infinity where the
   * backed-off bytes split a character, or where every ending's pieces fall below FORCED_FLOOR
   * (past the healed context): such a path is not run further.
   * @returns {Promise<number[]>}
   */
  async logProbs(typed, suggestions) {
    if (!suggestions.length) return []; // the common keystroke: the search found every count suggestion
    const { fill, canonical } = splitTyped(typed);
    const { ids: root, pending } = this.heal(canonical ? this.tokenizer.encode(canonical) : []);
    const endings = suggestions.map((suggestion) => {
      const generated = String.fromCharCode(...utf8Encoder.encode(suggestion.slice(typed.length + fill.length)));
      const rest = decodeBytes(pending + generated);
      if (rest === null) return null;
      const ends = Array.from(BOUNDARY_BYTES, (boundary) => {
        const { ids, pending: spanning } = this.heal(this.tokenizer.encode(rest + boundary));
        return { path: [...root, ...ids], spanning };
      });
      return [...ends, { path: [...root, ...this.tokenizer.encode(rest)], spanning: null }];
    });
    const floor = Math.log(FORCED_FLOOR) + this.healed((await this.context(root)).logProbs, pending);
    const forced = await this.force(endings.flatMap((ends) => (ends ? ends.map(({ path }) => path) : [])), root, floor);
    return endings.map((ends) => (ends ? this.endsScore(ends, forced, floor) : -Infinity));
  }

  /**
   * log of the summed probabilities of the endings ({path, the bytes the next piece starts with or
   * null for EOS}), each path's pieces as force scored them (runtime/complete.py _ends_score); a
   * path that fell below `floor` adds nothing.
   * @param {Map<string, {logProb: number, after: Float32Array|null}>} forced
   */
  endsScore(ends, forced, floor) {
    let total = -Infinity;
    for (const { path, spanning } of ends) {
      const { logProb, after } = forced.get(path.join()) ?? { logProb: -Infinity, after: null };
      if (logProb < floor || after === null) continue;
      let last = -Infinity;
      if (spanning === null) last = after[this.config.eos_id];
      else {
        this.reproducing(spanning).forEach((piece) => {
          if (!this.blocked.includes(piece) && this.tokenizer.pieceBytes[piece].startsWith(spanning)) last = logAdd(last, after[piece]);
        });
      }
      if (last > -Infinity) total = logAdd(total, logProb + last);
    }
    return total;
  }

  /**
   * Teacher-force every path past `root` (a prefix of each): a Map from each prefix reached (its
   * comma-joined pieces) to {logProb of its pieces past root, after: the model's next-piece
   * log-probs after it}; one below `floor` goes no further and is not run (after null). What the
   * cache lacks runs in one batched step a depth at a time (advance), not a step a piece; the
   * outputs are kept here, so that the cache evicting them mid-call costs nothing
   * (runtime/complete.py _force).
   * @param {number[][]} paths
   * @param {number[]} root
   * @param {number} floor
   */
  async force(paths, root, floor) {
    const rootOutput = await this.context(root), rootKey = root.join();
    /** @type {Map<string, {logProbs: Float32Array, state: Float32Array}>} */
    const outputs = new Map([[rootKey, rootOutput]]);
    /** @type {Map<string, {logProb: number, after: Float32Array|null}>} */
    const forced = new Map([[rootKey, { logProb: 0, after: rootOutput.logProbs }]]);
    // Each path's pieces known in `forced` so far, and that prefix's key: `forced` only grows, so a
    // path's walk goes on from where it stopped instead of joining every prefix again each depth.
    const walks = paths.map((ids) => ({ ids, known: root.length, prefix: rootKey }));
    const keyAfter = (walk) => (walk.known ? `${walk.prefix},${walk.ids[walk.known]}` : String(walk.ids[0]));
    const depths = Math.max(0, ...paths.map((ids) => ids.length)) - root.length;
    for (let depth = 0; depth < depths; depth++) {
      const beams = [], chosen = [];
      for (const walk of walks) {
        const { ids } = walk;
        while (walk.known < ids.length) {
          const next = keyAfter(walk);
          if (!forced.has(next)) break;
          walk.prefix = next;
          walk.known++;
        }
        const output = outputs.get(walk.prefix);
        if (walk.known === ids.length || !output) continue; // done, below the floor, or in this batch
        const key = keyAfter(walk), piece = ids[walk.known];
        const logProb = /** @type {{logProb: number}} */ (forced.get(walk.prefix)).logProb + output.logProbs[piece];
        const hit = logProb >= floor ? this.cached(key) : undefined;
        forced.set(key, { logProb, after: hit ? hit.logProbs : null });
        if (hit) outputs.set(key, hit);
        else if (logProb >= floor) {
          beams.push({ score: 0, ...output, text: "", pending: "", pieces: ids.slice(0, walk.known) });
          chosen.push({ beamIndex: beams.length - 1, piece, score: 0, text: "", pending: "" });
        }
      }
      for (const beam of beams.length ? await this.advance(beams, chosen) : []) {
        const key = beam.pieces.join();
        outputs.set(key, { logProbs: beam.logProbs, state: beam.state });
        forced.set(key, { logProb: /** @type {{logProb: number}} */ (forced.get(key)).logProb, after: beam.logProbs });
      }
    }
    return forced;
  }

  /** Log of the first step's mass on pieces that could reproduce pending (runtime/complete.py step 5). */
  healed(logProbs, pending) {
    if (!pending) return 0;
    let mass = -Infinity;
    this.reproducing(pending).forEach((piece) => {
      if (!this.blocked.includes(piece)) mass = logAdd(mass, logProbs[piece]);
    });
    return mass;
  }

  /**
   * The pieces a beam with `pending` bytes may take, ascending: those that start with them or are a
   * prefix of them (never EOS nor an empty piece). Cached per pending: a search asks for the same
   * few again and again.
   * @returns {Int32Array}
   */
  reproducing(pending) {
    let pieces = this.pendingPieces.get(pending);
    if (!pieces) {
      const found = [];
      this.tokenizer.pieceBytes.forEach((bytes, piece) => {
        if (bytes && piece !== this.config.eos_id && (bytes.startsWith(pending) || pending.startsWith(bytes))) found.push(piece);
      });
      pieces = Int32Array.from(found);
      if (this.pendingPieces.size >= CONTEXT_CACHE_ENTRIES) this.pendingPieces.clear();
      this.pendingPieces.set(pending, pieces);
    }
    return pieces;
  }

  /** Beam search (runtime/complete.py steps 3-4), live beams below floor dropped; returns Map text -> log-prob. */
  async search(root, k, prefix, floor) {
    let beams = [root];
    const finished = new Map();
    for (let stepIndex = 0; stepIndex < MAX_STEPS; stepIndex++) {
      const scores = this.scores(beams);
      const chosen = [];
      for (const flat of candidateOrder(scores)) {
        const beamIndex = Math.floor(flat / this.vocabSize), piece = flat % this.vocabSize;
        const outcome = this.extend(beams[beamIndex], piece, prefix);
        if (!outcome) continue;
        const score = scores[flat];
        if (outcome.done) {
          const old = finished.get(outcome.text);
          finished.set(outcome.text, old === undefined ? score : logAdd(old, score));
        } else {
          chosen.push({ beamIndex, piece, score, text: outcome.text, pending: outcome.pending });
          if (chosen.length === BEAM_WIDTH) break;
        }
      }
      const kept = chosen.filter((c) => c.score >= floor);
      if (!kept.length) break;
      beams = await this.advance(beams, kept);
      if (finished.size >= k && beams[0].score < [...finished.values()].sort((a, b) => b - a)[k - 1]) break;
    }
    return finished;
  }

  /**
   * Beam score + next-piece log-prob for every (beam, piece), in float64; blocked pieces -inf, and
   * so is every piece a beam with pending bytes cannot take (extend refuses it): the walk over the
   * candidates then reaches the few it can take without sorting past thousands it cannot.
   */
  scores(beams) {
    const V = this.vocabSize;
    const scores = new Float64Array(beams.length * V);
    beams.forEach((beam, b) => {
      const row = b * V;
      if (beam.pending) {
        scores.fill(-Infinity, row, row + V);
        for (const piece of this.reproducing(beam.pending)) scores[row + piece] = beam.score + beam.logProbs[piece];
      } else {
        for (let piece = 0; piece < V; piece++) scores[row + piece] = beam.score + beam.logProbs[piece];
      }
      for (const piece of this.blocked) scores[row + piece] = -Infinity;
    });
    return scores;
  }

  /** {text, pending, done} after appending piece to beam, or null if it is not allowed. */
  extend(beam, piece, prefix) {
    if (piece === this.config.eos_id) {
      if (beam.pending || !beam.text || junk(prefix, beam.text) || !enoughBytes(prefix, beam.text)) return null;
      return { text: beam.text, pending: "", done: true };
    }
    const bytes = this.tokenizer.pieceBytes[piece];
    let added = bytes;
    if (beam.pending) {
      if (bytes.startsWith(beam.pending)) added = bytes.slice(beam.pending.length);
      else if (beam.pending.startsWith(bytes)) return { text: beam.text, pending: beam.pending.slice(bytes.length), done: false };
      else return null;
    }
    const text = beam.text + added;
    for (let position = Math.max(1, beam.text.length); position < text.length; position++) {
      if (BOUNDARY_BYTES.includes(text[position])) {
        const done = text.slice(0, position);
        return !junk(prefix, done) && enoughBytes(prefix, done) ? { text: done, pending: "", done: true } : null;
      }
    }
    return junk(prefix, text, false) ? null : { text, pending: "", done: false };
  }

  /**
   * The chosen (beam, piece) pairs as beams: cached piece sequences (an earlier keystroke's search
   * often took the same ones) are reused, the rest run in one batched infer step.
   */
  async advance(beams, chosen) {
    const pieces = chosen.map(({ beamIndex, piece }) => [...beams[beamIndex].pieces, piece]);
    const outputs = pieces.map((key) => this.cached(key.join()));
    const missing = outputs.flatMap((output, i) => (output ? [] : [i]));
    if (missing.length) {
      const { outer, inner, rowSize } = this.layout;
      const B = missing.length;
      // Row b of a B-row state is, for each outer block o, the `inner` values at (o * B + b) * inner.
      const state = new Float32Array(rowSize * B);
      missing.forEach((i, b) => {
        const own = beams[chosen[i].beamIndex].state;
        for (let o = 0; o < outer; o++) state.set(own.subarray(o * inner, (o + 1) * inner), (o * B + b) * inner);
      });
      const out = await this.step(missing.map((i) => chosen[i].piece), state);
      const V = this.vocabSize;
      missing.forEach((i, b) => {
        const own = new Float32Array(rowSize);
        for (let o = 0; o < outer; o++) own.set(out.state.subarray((o * B + b) * inner, (o * B + b + 1) * inner), o * inner);
        outputs[i] = { logProbs: out.logProbs.subarray(b * V, (b + 1) * V), state: own };
        this.remember(pieces[i].join(), outputs[i]);
      });
    }
    return chosen.map(({ score, text, pending }, i) => ({ score, ...outputs[i], text, pending, pieces: pieces[i] }));
  }
}
