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

import { BEAM_WIDTH, CONTEXT_CACHE_ENTRIES, MAX_STEPS } from "./constants.js";
import { Heap } from "./heap.js";
import { splitTyped } from "./normalize.js";

const BOUNDARY_BYTES = "/?";
const utf8 = new TextDecoder("utf-8", { fatal: true });

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

/** Flat candidate indices, best first: score desc, then index (numpy's stable argsort). */
function candidateQueue(scores) {
  const live = [];
  scores.forEach((score, index) => { if (score !== -Infinity) live.push(index); });
  return new Heap((a, b) => scores[a] > scores[b] || (scores[a] === scores[b] && a < b), live);
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
   */
  constructor({ tokenizer, step, config, state, blockedIds }) {
    this.tokenizer = tokenizer;
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
  }

  /** {logProbs, state} after BOS + ids, reusing the longest cached prefix. */
  async context(ids) {
    let known = ids.length;
    while (known >= 0 && !this.contexts.has(ids.slice(0, known).join())) known--;
    let entry = known >= 0 ? this.contexts.get(ids.slice(0, known).join()) : null;
    for (let n = known + 1; n <= ids.length; n++) {
      const token = n === 0 ? this.config.bos_id : ids[n - 1];
      const { logProbs, state } = await this.step([token], entry ? entry.state : new Float32Array(this.layout.rowSize));
      entry = { logProbs, state };
      this.remember(ids.slice(0, n).join(), entry);
    }
    this.remember(ids.join(), entry);
    return entry;
  }

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
    if (k <= 0) return [];
    const { fill, canonical } = splitTyped(typed);
    const { ids, pending } = this.heal(canonical ? this.tokenizer.encode(canonical) : []);
    const { logProbs, state } = await this.context(ids);
    const finished = await this.search({ score: 0, logProbs, state, text: "", pending }, k);
    const ranked = [...finished].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const suggestions = [];
    for (const [text] of ranked) {
      const decoded = decodeBytes(text);
      if (decoded === null) continue;
      suggestions.push(typed + fill + decoded);
      if (suggestions.length === k) break;
    }
    return suggestions;
  }

  /** Beam search (runtime/complete.py steps 3-4); returns Map text -> log-prob. */
  async search(root, k) {
    let beams = [root];
    const finished = new Map();
    for (let stepIndex = 0; stepIndex < MAX_STEPS; stepIndex++) {
      const scores = this.scores(beams);
      const queue = candidateQueue(scores);
      const chosen = [];
      for (let flat = queue.pop(); flat !== undefined; flat = queue.pop()) {
        const beamIndex = Math.floor(flat / this.vocabSize), piece = flat % this.vocabSize;
        const outcome = this.extend(beams[beamIndex], piece);
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
      if (!chosen.length) break;
      beams = await this.advance(beams, chosen);
      if (finished.size >= k && beams[0].score < [...finished.values()].sort((a, b) => b - a)[k - 1]) break;
    }
    return finished;
  }

  /** Beam score + next-piece log-prob for every (beam, piece), in float64; blocked pieces -inf. */
  scores(beams) {
    const V = this.vocabSize;
    const scores = new Float64Array(beams.length * V);
    beams.forEach((beam, b) => {
      for (let piece = 0; piece < V; piece++) scores[b * V + piece] = beam.score + beam.logProbs[piece];
      for (const piece of this.blocked) scores[b * V + piece] = -Infinity;
    });
    return scores;
  }

  /** {text, pending, done} after appending piece to beam, or null if it is not allowed. */
  extend(beam, piece) {
    if (piece === this.config.eos_id) {
      return !beam.pending && beam.text ? { text: beam.text, pending: "", done: true } : null;
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
      if (BOUNDARY_BYTES.includes(text[position])) return { text: text.slice(0, position), pending: "", done: true };
    }
    return { text, pending: "", done: false };
  }

  /** One batched infer step for the chosen (beam, piece) pairs; state rows follow chosen order. */
  async advance(beams, chosen) {
    const { outer, inner, rowSize } = this.layout;
    const B = chosen.length;
    // Row b of a B-row state is, for each outer block o, the `inner` values at (o * B + b) * inner.
    const state = new Float32Array(rowSize * B);
    chosen.forEach(({ beamIndex }, b) => {
      const own = beams[beamIndex].state;
      for (let o = 0; o < outer; o++) state.set(own.subarray(o * inner, (o + 1) * inner), (o * B + b) * inner);
    });
    const out = await this.step(chosen.map((c) => c.piece), state);
    const V = this.vocabSize;
    return chosen.map(({ score, text, pending }, b) => {
      const own = new Float32Array(rowSize);
      for (let o = 0; o < outer; o++) own.set(out.state.subarray((o * B + b) * inner, (o * B + b + 1) * inner), o * inner);
      return { score, logProbs: out.logProbs.subarray(b * V, (b + 1) * V), state: own, text, pending };
    });
  }
}
