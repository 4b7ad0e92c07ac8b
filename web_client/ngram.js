/**
 * Character n-grams, runtime/ngram.py's twins suggestion for suggestion and
 * score for score (read that module's docstring for the algorithm): the personal n-gram of this
 * user's own visits (CharNgram; client.js builds one from the history in IndexedDB, and nothing
 * here leaves the device), and a bundle's count component read from counts.bin (CountTrie; the
 * completion worker's FusedCompleter searches it beside the network, each side scoring the other's
 * suggestions, fuseSuggestions fuses the two and withRepeats mixes in the words already typed in
 * the URL). The personal n-gram scores with stupid backoff,
 * the count component with interpolated absolute discounting (COUNT_DISCOUNT).
 *
 * A symbol is one code point (Python's str), so strings are walked with Array.from, and ties
 * are broken by code points, not UTF-16 units. Scores are float64 products, never logarithms,
 * so both languages compute the very same numbers.
 */

import { enough, junk } from "./completer.js";
import {
  COUNT_DISCOUNT, COUNT_FLOOR, FUSION_K, FUSION_WEIGHT, NGRAM_ALPHA, NGRAM_BEAM_WIDTH, NGRAM_MAX_CHARS, NGRAM_ORDER, NGRAM_RANKED_CACHE_ENTRIES,
  MIN_ADDED_CHARS, PERSONAL_WEIGHT, REPEAT_K, REPEAT_TYPED, REPEAT_WEIGHT,
} from "./constants.js";
import { pastHost, splitTyped } from "./normalize.js";

const BOS = "\u0002";
const EOS = "\u0003";
const BOUNDARY_CHARS = "/?";

/**
 * Python's str ordering: by code points. UTF-16 units order alike except a surrogate against a
 * unit above it, so only the first unit that differs is read as a code point (no allocation: ties
 * are frequent in the ranking).
 */
function compareCodePoints(a, b) {
  for (let i = 0; i < a.length && i < b.length; i++) {
    if (a.charCodeAt(i) !== b.charCodeAt(i)) {
      return /** @type {number} */ (a.codePointAt(i)) - /** @type {number} */ (b.codePointAt(i));
    }
  }
  return a.length - b.length;
}

/** Best score first, ties by code points (runtime/ngram.py sorts by (-score, text)). */
const byScoreThenText = (a, b) => (a[1] > b[1] ? -1 : a[1] < b[1] ? 1 : compareCodePoints(a[0], b[0]));

/** rankedNext's order of [score, symbol] candidates: best score first, ties by code point. */
const bestFirst = (a, b) => (a[0] > b[0] ? -1 : a[0] < b[0] ? 1 : compareCodePoints(a[1], b[1]));

/**
 * The scoring and search both n-grams share; a subclass only says where the counts live
 * (forEachCount), so the two cannot drift apart. Symbols are counted by slot (an index into
 * `symbols`), so that scoring a history fills a typed array rather than a Map of strings.
 */
class BackoffNgram {
  constructor({ order = NGRAM_ORDER, alpha = NGRAM_ALPHA, beamWidth = NGRAM_BEAM_WIDTH,
    maxChars = NGRAM_MAX_CHARS, discount = null } = {}) {
    this.order = order;
    this.alpha = alpha;
    /** @type {number|null} null: stupid backoff; a number: interpolated absolute discounting's D */
    this.discount = discount;
    this.beamWidth = beamWidth;
    this.maxChars = maxChars;
    this.powers = [1]; // alpha ** j by repeated multiplication, as runtime/ngram.py builds it
    for (let j = 0; j < order; j++) this.powers.push(this.powers[j] * alpha);
    this.urls = 0;
    /** @type {string[]} slot -> symbol */
    this.symbols = [];
    /** @type {Map<string, number>} symbol -> slot */
    this.slots = new Map();
    this.scratch = new Float64Array(0); // rankedNext's scores by slot, reused: allocating costs as much as scoring
    this.unigramScratch = new Uint32Array(0); // interpolated's slots of the empty context, reused alike
    /** @type {Map<string, Array<[number, string]>>} last order-1 symbols -> rankedNext */
    this.ranked = new Map();
    /** @type {Map<string, Array<[number, string]>>} the cache before the last turnover (remember) */
    this.rankedBefore = new Map();
  }

  /**
   * Calls visit(n, c(ctx), slot, c(ctx, symbol)) for every count of every context ctx of n symbols
   * that ends `last` (the history's last order-1 symbols), longest context first.
   * @param {string[]} _last
   * @param {(n: number, total: number, slot: number, count: number) => void} _visit
   */
  forEachCount(_last, _visit) {
    throw new Error("a subclass says where its counts live");
  }

  /**
   * S(symbol | history) by slot, -1 for a symbol never seen after it (stupid backoff) or never
   * counted at all (interpolated) (runtime/ngram.py scores),
   * in `scratch`, so valid until the next call.
   * @param {string[]} last the history's last order-1 symbols
   */
  slotScores(last) {
    if (this.scratch.length !== this.symbols.length) this.scratch = new Float64Array(this.symbols.length);
    const scores = this.scratch.fill(-1);
    if (this.discount !== null) return this.interpolated(last, scores, this.discount);
    this.forEachCount(last, (n, total, slot, c) => {
      if (scores[slot] < 0) scores[slot] = c / total * this.powers[this.order - 1 - n];
    });
    return scores;
  }

  /**
   * slotScores by interpolated absolute discounting (runtime/ngram.py _interpolated, the same
   * float64 operations in the same order): each counted context, longest first, adds its
   * discounted counts times the weight the longer ones left, then the symbols counted at all
   * share what is left.
   * @param {string[]} last
   * @param {Float64Array} scores filled with -1
   * @param {number} discount
   */
  interpolated(last, scores, discount) {
    let weight = 1, context = -1, contextTotal = 0, kept = 0, unigramCount = 0;
    if (this.unigramScratch.length !== scores.length) this.unigramScratch = new Uint32Array(scores.length);
    const unigrams = this.unigramScratch;
    this.forEachCount(last, (n, total, slot, c) => {
      if (n !== context) {
        if (context >= 0) weight *= (contextTotal - kept) / contextTotal;
        context = n;
        contextTotal = total;
        kept = 0;
      }
      const d = Math.max(c - discount, 0);
      scores[slot] = (scores[slot] < 0 ? 0 : scores[slot]) + weight * (d / total);
      kept += d;
      if (n === 0) unigrams[unigramCount++] = slot;
    });
    if (context >= 0) weight *= (contextTotal - kept) / contextTotal;
    for (let i = 0; i < unigramCount; i++) scores[unigrams[i]] += weight / unigramCount;
    return scores;
  }

  /**
   * The score completeScored would give `suggestion` (typed + fill + text) had it found it
   * (runtime/ngram.py score): the product of S over the text's symbols, times the S of EOS, "/"
   * and "?" added in that order; 0 where a symbol was never counted. fuseSuggestions scores the
   * network's suggestions with it.
   */
  score(typed, suggestion) {
    const { fill, canonical } = splitTyped(typed);
    const symbols = [...Array(this.order - 1).fill(BOS), ...Array.from(canonical)];
    const of = (x) => {
      const slot = this.slots.get(x), last = this.order > 1 ? symbols.slice(-(this.order - 1)) : [];
      const s = slot === undefined ? -1 : this.slotScores(last)[slot];
      return s < 0 ? 0 : s;
    };
    let s = 1;
    for (const x of Array.from(suggestion.slice(typed.length + fill.length))) {
      s *= of(x);
      symbols.push(x);
    }
    let end = 0;
    for (const x of EOS + BOUNDARY_CHARS) end += of(x);
    return s * end;
  }

  /**
   * Candidates after `last`, a history's last order-1 symbols, best first: finishing symbols and
   * the best others.
   * @param {string[]} last
   */
  rankedNext(last) {
    const key = last.join("");
    let ranked = this.ranked.get(key);
    if (ranked) return ranked;
    ranked = this.rankedBefore.get(key);
    if (ranked) {
      this.remember(key, ranked);
      return ranked;
    }
    const scores = this.slotScores(last);
    // The finishing symbols, and the beamWidth best others kept in order as they come: sorting
    // every symbol seen would take longer than the rest of the search step.
    const finishing = [], best = [], finishingSlots = [EOS, ...BOUNDARY_CHARS].map((x) => this.slots.get(x));
    for (let slot = 0; slot < scores.length; slot++) {
      const s = scores[slot];
      if (s < 0) continue;
      const x = this.symbols[slot];
      if (finishingSlots.includes(slot)) {
        finishing.push([s, x]);
        continue;
      }
      if (best.length === this.beamWidth && s < best[best.length - 1][0]) continue; // most symbols end here
      /** @type {[number, string]} */
      const candidate = [s, x];
      let i = best.length; // where the candidate goes among the best so far
      while (i > 0 && bestFirst(candidate, best[i - 1]) < 0) i--;
      if (i === this.beamWidth) continue;
      // Shift the worse ones down by hand, the last falling off a full list: splice and
      // shortening the array cost more than the rest of the loop.
      for (let j = Math.min(best.length, this.beamWidth - 1); j > i; j--) best[j] = best[j - 1];
      best[i] = candidate;
    }
    ranked = [...best, ...finishing].sort(bestFirst);
    this.remember(key, ranked);
    return ranked;
  }

  /**
   * Keep rankedNext's answer for `key`. A full cache becomes the one before and a new one starts:
   * the histories used since the last turnover survive the next, at the cost of one Map lookup
   * more on a miss (an LRU's reordering on every hit cost more than it saved).
   */
  remember(key, ranked) {
    if (this.ranked.size >= NGRAM_RANKED_CACHE_ENTRIES) {
      this.rankedBefore = this.ranked;
      this.ranked = new Map();
    }
    this.ranked.set(key, ranked);
  }

  /**
   * Up to k suggestions with their scores, best first, each typed + fill + generated text.
   * @returns {Array<[string, number]>}
   */
  completeScored(typed, k) {
    if (k <= 0 || !this.urls) return [];
    const { fill, canonical } = splitTyped(typed);
    // A beam keeps only its last order - 1 symbols, all that rankedNext reads of its history.
    const keep = this.order - 1, history = [...Array(keep).fill(BOS), ...Array.from(canonical)];
    let beams = [{ score: 1, last: keep ? history.slice(-keep) : [], text: "" }];
    /** @type {Map<string, number>} */
    const finished = new Map();
    for (let step = 0; step < this.maxChars; step++) {
      const candidates = [];
      beams.forEach((beam, b) => {
        for (const [s, x] of this.rankedNext(beam.last)) candidates.push({ score: beam.score * s, b, x });
      });
      candidates.sort((p, q) => (p.score > q.score ? -1 : p.score < q.score ? 1 : p.b - q.b
        || compareCodePoints(p.x, q.x)));
      const chosen = [];
      for (const { score, b, x } of candidates) {
        const { text, last } = beams[b];
        if (x === EOS || (BOUNDARY_CHARS.includes(x) && text)) {
          if (text && !junk(canonical, text) && enough(canonical, [...text].length)) {
            finished.set(text, (finished.get(text) ?? 0) + score);
          }
          continue;
        }
        if (junk(canonical, text + x, false)) continue;
        chosen.push({ score, last: keep ? [...last.slice(1), x] : [], text: text + x });
        if (chosen.length === this.beamWidth) break;
      }
      if (!chosen.length) break;
      beams = chosen;
      if (finished.size >= k && beams[0].score < [...finished.values()].sort((a, b) => b - a)[k - 1]) break;
    }
    return [...finished].sort(byScoreThenText).slice(0, k).map(([text, score]) => [typed + fill + text, score]);
  }
}

/** The personal n-gram: counts in Maps keyed by context, grown one visit at a time. */
export class CharNgram extends BackoffNgram {
  /** @param {Iterable<string>} urls canonical URLs */
  constructor(urls = [], options = {}) {
    super(options);
    /** @type {Map<string, Map<number, number>>} context -> next symbol's slot -> count */
    this.counts = new Map();
    /** @type {Map<string, number>} */
    this.totals = new Map();
    for (const url of urls) this.add(url);
  }

  /** Count one more canonical URL. */
  add(url) {
    const symbols = [...Array(this.order - 1).fill(BOS), ...Array.from(url), EOS];
    for (let i = this.order - 1; i < symbols.length; i++) {
      const slot = this.slotOf(symbols[i]);
      for (let n = 0; n < this.order; n++) {
        const ctx = symbols.slice(i - n, i).join("");
        const table = this.counts.get(ctx) ?? new Map();
        table.set(slot, (table.get(slot) ?? 0) + 1);
        this.counts.set(ctx, table);
        this.totals.set(ctx, (this.totals.get(ctx) ?? 0) + 1);
      }
    }
    this.urls += 1;
    this.ranked.clear();
    this.rankedBefore.clear();
  }

  /** A symbol's slot, given it a new one when first counted. */
  slotOf(symbol) {
    let slot = this.slots.get(symbol);
    if (slot === undefined) {
      slot = this.symbols.push(symbol) - 1;
      this.slots.set(symbol, slot);
    }
    return slot;
  }

  forEachCount(last, visit) {
    for (let n = last.length; n >= 0; n--) {
      const ctx = last.slice(last.length - n).join("");
      const total = this.totals.get(ctx);
      for (const [slot, c] of this.counts.get(ctx) ?? []) visit(n, total, slot, c);
    }
  }
}

const COUNTS_MAGIC = "FUCT";
const COUNTS_VERSION = 1;
const COUNTS_HEADER_BYTES = 20;
const MAX_ALPHABET = 255;
const MAX_VARINT_BYTES = 5; // u32 totals and counts

/** counts.bin is truncated, of another version or inconsistent (formats/counts.py CountsFormatError). */
export class CountsFormatError extends Error {
  constructor(message) {
    super(`counts.bin ${message}`);
    this.name = "CountsFormatError";
  }
}

/**
 * `count` LEB128 varints from data[offset:], and the offset after them.
 * @param {Uint8Array} data
 */
function readVarints(data, offset, count) {
  const values = new Uint32Array(count);
  for (let i = 0; i < count; i++) {
    let value = 0, scale = 1, length = 0, byte;
    do {
      if (offset === data.length) throw new CountsFormatError("is truncated: fewer varints than counts");
      if (++length > MAX_VARINT_BYTES) throw new CountsFormatError("has a varint longer than 5 bytes");
      byte = data[offset++];
      value += (byte & 0x7f) * scale; // float64: a 5-byte varint may exceed 32 bits, caught below
      scale *= 0x80;
    } while (byte >= 0x80);
    if (value > 0xffffffff) throw new CountsFormatError("has a varint above 2^32 - 1");
    values[i] = value;
  }
  return { values, offset };
}

/**
 * A bundle's count component: counts.bin (formats/counts.py) in typed arrays as it lies, the trie
 * of contexts read right to left, so hundreds of thousands of contexts decode in milliseconds and
 * a lookup is at most order - 1 binary searches. CharNgramLM.from_bytes is its twin.
 */
export class CountTrie extends BackoffNgram {
  /**
   * Every field is checked as formats/counts.py decode checks it.
   * @param {ArrayBuffer|Uint8Array} bytes counts.bin
   * @throws {CountsFormatError} for anything runtime/ngram.py's to_bytes would not write
   */
  constructor(bytes) {
    const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
    if (data.length < COUNTS_HEADER_BYTES) throw new CountsFormatError("is truncated: no header");
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const magic = String.fromCharCode(...data.subarray(0, 4)), version = data[4], order = data[5];
    const size = view.getUint16(6, true), n = view.getUint32(8, true), e = view.getUint32(12, true);
    if (magic !== COUNTS_MAGIC || version !== COUNTS_VERSION) {
      throw new CountsFormatError(`is not version ${COUNTS_VERSION} (magic ${JSON.stringify(magic)}, version ${version})`);
    }
    if (order < 1 || size < 1 || size > MAX_ALPHABET || n < 1) {
      throw new CountsFormatError(`header: order ${order}, alphabet ${size}, ${n} contexts`);
    }
    const nodes = COUNTS_HEADER_BYTES + 4 * size;
    if (data.length < nodes + 3 * n + e) throw new CountsFormatError("is truncated");
    super({ order, discount: COUNT_DISCOUNT });
    this.urls = view.getUint32(16, true);
    for (let i = 0, previous = -1; i < size; i++) { // the alphabet: a symbol's slot is its index
      const point = view.getUint32(COUNTS_HEADER_BYTES + 4 * i, true);
      if (point <= previous || point > 0x10ffff) {
        throw new CountsFormatError("alphabet is not strictly ascending code points");
      }
      this.slots.set(String.fromCodePoint(point), i);
      this.symbols.push(String.fromCodePoint(point));
      previous = point;
    }
    this.nodeSymbol = data.subarray(nodes, nodes + n); // alphabet index of a context's first symbol
    this.childCount = data.subarray(nodes + n, nodes + 2 * n);
    this.entryCount = data.subarray(nodes + 2 * n, nodes + 3 * n);
    this.entrySymbol = data.subarray(nodes + 3 * n, nodes + 3 * n + e);
    const totals = readVarints(data, nodes + 3 * n + e, n), counts = readVarints(data, totals.offset, e);
    if (counts.offset !== data.length) throw new CountsFormatError("has bytes after its last count");
    this.totals = totals.values;
    this.entryValue = counts.values;
    this.firstChild = new Uint32Array(n);
    this.firstEntry = new Uint32Array(n);
    this.checkTrie(size);
  }

  /** formats/counts.py decode's checks of the trie, filling in firstChild and firstEntry. */
  checkTrie(size) {
    const { order, nodeSymbol, childCount, entryCount, entrySymbol, entryValue, totals } = this;
    const n = nodeSymbol.length, e = entrySymbol.length;
    if (sum(childCount) !== n - 1 || sum(entryCount) !== e) {
      throw new CountsFormatError("node children or counts do not add up");
    }
    if (maximum(nodeSymbol) >= size || maximum(entrySymbol) >= size || entryValue.includes(0)) {
      throw new CountsFormatError("has a symbol outside its alphabet or a zero count");
    }
    const depth = new Uint8Array(n); // context length; nodes deeper than order - 1 are refused
    for (let i = 0, child = 1, entry = 0; i < n; i++) {
      const childEnd = child + childCount[i], entryEnd = entry + entryCount[i];
      if (i > 0 && i >= child) throw new CountsFormatError(`node ${i} is no node's child`);
      if (childEnd > n || (depth[i] >= order - 1 && childEnd > child)) {
        throw new CountsFormatError("trie is deeper than its order or overruns its nodes");
      }
      if (!ascending(nodeSymbol, child, childEnd) || !ascending(entrySymbol, entry, entryEnd)) {
        throw new CountsFormatError(`node ${i}: symbols not in strictly ascending order`);
      }
      let counted = 0;
      for (let j = entry; j < entryEnd; j++) counted += entryValue[j];
      if (counted > totals[i]) throw new CountsFormatError(`node ${i}: counts above its total`);
      for (let j = child; j < childEnd; j++) depth[j] = depth[i] + 1;
      this.firstChild[i] = child;
      this.firstEntry[i] = entry;
      child = childEnd;
      entry = entryEnd;
    }
  }

  /** The bundle's counts are pruned: a URL added now would count a dropped symbol from zero. */
  add() {
    throw new Error("a CountTrie is read-only: counts.bin was pruned (runtime/ngram.py CharNgramLM.prune)");
  }

  forEachCount(last, visit) {
    const path = [0]; // the nodes of the contexts that end `last`, shortest (the root) first
    for (let i = last.length - 1; i >= 0; i--) {
      const symbol = this.slots.get(last[i]);
      const node = symbol === undefined ? -1 : this.child(path[path.length - 1], symbol);
      if (node < 0) break;
      path.push(node);
    }
    for (let n = path.length - 1; n >= 0; n--) {
      const node = path[n], total = this.totals[node];
      for (let j = this.firstEntry[node], end = j + this.entryCount[node]; j < end; j++) {
        visit(n, total, this.entrySymbol[j], this.entryValue[j]);
      }
    }
  }

  /** The child of `node` whose context has `symbol` (an alphabet index) on the left, or -1. */
  child(node, symbol) {
    let low = this.firstChild[node], high = low + this.childCount[node];
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.nodeSymbol[middle] === symbol) return middle;
      if (this.nodeSymbol[middle] < symbol) low = middle + 1;
      else high = middle;
    }
    return -1;
  }
}

// Plain loops over typed arrays of up to a million values: a callback per value costs more.

/** @param {Uint8Array|Uint32Array} values */
function sum(values) {
  let total = 0;
  for (let i = 0; i < values.length; i++) total += values[i];
  return total;
}

/** @param {Uint8Array} values */
function maximum(values) {
  let most = 0;
  for (let i = 0; i < values.length; i++) if (values[i] > most) most = values[i];
  return most;
}

/** Whether values[start:end] strictly ascend. */
function ascending(values, start, end) {
  for (let i = start + 1; i < end; i++) if (values[i - 1] >= values[i]) return false;
  return true;
}

/**
 * The model's and the personal n-gram's suggestions as one list (runtime/ngram.py mix): score =
 * w * exp(model log-prob) + (1 - w) * personal score, a side that did not propose a suggestion
 * adding 0; top k, ties by text. With no personal suggestion, the model's list as it is.
 * @param {Array<[string, number]>} model [suggestion, log-prob], best first
 * @param {Array<[string, number]>} personal [suggestion, score] from CharNgram.completeScored
 * @returns {string[]}
 */
export function mixSuggestions(model, personal, k, weight = PERSONAL_WEIGHT) {
  if (!personal.length) return model.slice(0, k).map(([text]) => text);
  return blend(model, personal, k, weight).map(([text]) => text);
}

/**
 * The linear mixture of mixSuggestions and withRepeats (runtime/ngram.py blend): score = w *
 * exp(log-prob) + (1 - w) * other score; top k [text, score], ties by text.
 * @param {Array<[string, number]>} logs [suggestion, log-prob]
 * @param {Array<[string, number]>} others [suggestion, score]
 * @returns {Array<[string, number]>}
 */
function blend(logs, others, k, weight) {
  const score = new Map();
  for (const [text, logProb] of logs) score.set(text, weight * Math.exp(logProb));
  for (const [text, s] of others) score.set(text, (score.get(text) ?? 0) + (1 - weight) * s);
  return [...score].sort(byScoreThenText).slice(0, k);
}

/**
 * Every suggestion the network or the count component proposed, each scored by both sides, as one
 * list (runtime/ngram.py fuse): log score = w * network log-prob + (1 - w) * log S (S at least
 * COUNT_FLOOR; a text the network cannot reach or gives less than FORCED_FLOOR, log-prob -Infinity,
 * is dropped), normalised over the list so the shares sum to 1; top k, ties by text, as logs so
 * that mixSuggestions takes them like the network's log-probs.
 * @param {Array<[string, number, number]>} scored [suggestion, network log-prob, count score S]:
 *   Completer.logProbs and CountTrie.score score the texts the other side proposed
 * @returns {Array<[string, number]>} [suggestion, log share], best first
 */
export function fuseSuggestions(scored, k, weight = FUSION_WEIGHT) {
  /** @type {Array<[string, number]>} */
  const logs = [];
  for (const [text, logProb, s] of scored) {
    const score = weight * logProb + (1 - weight) * Math.log(Math.max(s, COUNT_FLOOR));
    if (score > -Infinity) logs.push([text, score]);
  }
  if (!logs.length) return [];
  const top = Math.max(...logs.map(([, score]) => score));
  let total = 0;
  for (const [, score] of logs) total += Math.exp(score - top);
  const norm = top + Math.log(total);
  return logs.sort(byScoreThenText).slice(0, k).map(([text, score]) => [text, score - norm]);
}

const isWordChar = (code) => (code >= 48 && code <= 57) || (code >= 65 && code <= 90) || (code >= 97 && code <= 122);

/**
 * The word being typed past the host finished as a longer word typed earlier in the same URL
 * (runtime/ngram.py repeated_words): up to k, the most frequent first, ties by text. A word is a run
 * of ASCII letters and digits; REPEAT_TYPED of its characters must be typed (as typed: a space's %20 is
 * no word), the suggestion must add MIN_ADDED_CHARS or more and not be junk.
 * @returns {string[]}
 */
export function repeatedWords(typed, k = REPEAT_K) {
  const { fill, canonical } = splitTyped(typed);
  let start = canonical.length;
  while (start > 0 && isWordChar(canonical.charCodeAt(start - 1))) start--;
  const part = canonical.slice(start);
  if (part.length < REPEAT_TYPED || !typed.endsWith(part) || !pastHost(canonical)) return [];
  const seen = new Map();
  for (const word of canonical.slice(0, start).match(/[A-Za-z0-9]+/g) ?? []) {
    if (word.startsWith(part) && word.length - part.length >= MIN_ADDED_CHARS && !junk(canonical, word.slice(part.length))) {
      seen.set(word, (seen.get(word) ?? 0) + 1);
    }
  }
  return [...seen].sort(byScoreThenText).slice(0, k).map(([word]) => typed + fill + word.slice(part.length));
}

/**
 * fuseSuggestions' list mixed with repeatedWords (runtime/ngram.py with_repeats): share = (1 - w) *
 * the fused share + w / (number of repeats) for a repeat; top k, ties by text, as logs.
 * @param {Array<[string, number]>} fused [suggestion, log share], best first
 * @returns {Array<[string, number]>}
 */
export function withRepeats(fused, typed, k, weight = REPEAT_WEIGHT) {
  const repeats = repeatedWords(typed);
  if (!repeats.length) return fused.slice(0, k);
  const even = repeats.map((text) => /** @type {[string, number]} */ ([text, 1 / repeats.length]));
  return blend(fused, even, k, 1 - weight).map(([text, share]) => [text, Math.log(share)]);
}

/**
 * A model version's network fused with its bundle's count component and with the words already
 * typed in the URL, as runtime/ngram.py FusedCompleter fuses them: the completion worker suggests
 * with it, so a keystroke is one request and the page's thread, which also renders what was typed,
 * searches nothing.
 */
export class FusedCompleter {
  /**
   * @param {import("./completer.js").Completer} completer the network's, with the manifest's threshold
   * @param {CountTrie} trie counts.bin
   */
  constructor(completer, trie) {
    this.completer = completer;
    this.trie = trie;
  }

  /**
   * The top k of fuseSuggestions over max(k, FUSION_K) suggestions from each side, each side's past
   * the threshold; each side then scores the texts only the other proposed.
   * @returns {Promise<Array<[string, number]>>} [suggestion, log share], best first
   */
  async completeScored(typed, k) {
    const wide = Math.max(k, FUSION_K), threshold = this.completer.threshold;
    const network = await this.completer.completeScored(typed, wide);
    const counts = new Map(this.trie.completeScored(typed, wide).filter(([, s]) => s >= threshold));
    const found = new Set(network.map(([text]) => text)), others = [...counts.keys()].filter((text) => !found.has(text));
    /** @type {Array<[string, number, number]>} */
    const scored = network.map(([text, logProb]) => [text, logProb, counts.get(text) ?? this.trie.score(typed, text)]);
    const logProbs = await this.completer.logProbs(typed, others);
    others.forEach((text, i) => scored.push([text, logProbs[i], /** @type {number} */ (counts.get(text))]));
    return withRepeats(fuseSuggestions(scored, k), typed, k);
  }
}
