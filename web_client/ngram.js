/**
 * The personal n-gram: a character n-gram of this user's own visited URLs (stupid backoff),
 * mixed with the model's suggestions. runtime/ngram.py is its twin, suggestion for suggestion and
 * score for score: read that module's docstring for the algorithm. client.js builds one from the
 * history in IndexedDB and adds every new visit; nothing here leaves the device.
 *
 * A symbol is one code point (Python's str), so strings are walked with Array.from, and ties
 * are broken by code points, not UTF-16 units. Scores are float64 products, never logarithms,
 * so both languages compute the very same numbers.
 */

import { junk } from "./completer.js";
import { NGRAM_ALPHA, NGRAM_BEAM_WIDTH, NGRAM_MAX_CHARS, NGRAM_ORDER, PERSONAL_WEIGHT } from "./constants.js";
import { splitTyped } from "./normalize.js";

const BOS = "\u0002";
const EOS = "\u0003";
const BOUNDARY_CHARS = "/?";

/** Python's str ordering: by code points. */
function compareCodePoints(a, b) {
  const x = Array.from(a, (c) => /** @type {number} */ (c.codePointAt(0)));
  const y = Array.from(b, (c) => /** @type {number} */ (c.codePointAt(0)));
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

/** Best score first, ties by code points (runtime/ngram.py sorts by (-score, text)). */
const byScoreThenText = (a, b) => (a[1] > b[1] ? -1 : a[1] < b[1] ? 1 : compareCodePoints(a[0], b[0]));

export class CharNgram {
  /** @param {Iterable<string>} urls canonical URLs */
  constructor(urls = [], { order = NGRAM_ORDER, alpha = NGRAM_ALPHA, beamWidth = NGRAM_BEAM_WIDTH,
    maxChars = NGRAM_MAX_CHARS } = {}) {
    this.order = order;
    this.alpha = alpha;
    this.beamWidth = beamWidth;
    this.maxChars = maxChars;
    this.powers = [1]; // alpha ** j by repeated multiplication, as runtime/ngram.py builds it
    for (let j = 0; j < order; j++) this.powers.push(this.powers[j] * alpha);
    /** @type {Map<string, Map<string, number>>} context -> next symbol -> count */
    this.counts = new Map();
    /** @type {Map<string, number>} */
    this.totals = new Map();
    this.urls = 0;
    this.ranked = new Map();
    for (const url of urls) this.add(url);
  }

  /** Count one more canonical URL. */
  add(url) {
    const symbols = [...Array(this.order - 1).fill(BOS), ...Array.from(url), EOS];
    for (let i = this.order - 1; i < symbols.length; i++) {
      for (let n = 0; n < this.order; n++) {
        const ctx = symbols.slice(i - n, i).join("");
        const table = this.counts.get(ctx) ?? new Map();
        table.set(symbols[i], (table.get(symbols[i]) ?? 0) + 1);
        this.counts.set(ctx, table);
        this.totals.set(ctx, (this.totals.get(ctx) ?? 0) + 1);
      }
    }
    this.urls += 1;
    this.ranked.clear();
  }

  /** Candidates after the last order-1 symbols, best first: finishing symbols and the best others. */
  rankedNext(symbols) {
    const key = this.order > 1 ? symbols.slice(-(this.order - 1)).join("") : "";
    let ranked = this.ranked.get(key);
    if (ranked) return ranked;
    const last = this.order > 1 ? symbols.slice(-(this.order - 1)) : [];
    const scores = new Map();
    for (let n = this.order - 1; n >= 0; n--) {
      const ctx = n ? last.slice(last.length - n).join("") : "";
      const table = this.counts.get(ctx);
      if (!table) continue;
      const total = /** @type {number} */ (this.totals.get(ctx)), power = this.powers[this.order - 1 - n];
      for (const [x, c] of table) if (!scores.has(x)) scores.set(x, c / total * power);
    }
    ranked = [];
    let others = 0;
    for (const [x, s] of [...scores].sort(byScoreThenText)) {
      if (x === EOS || BOUNDARY_CHARS.includes(x)) ranked.push([s, x]);
      else if (others < this.beamWidth) {
        ranked.push([s, x]);
        others += 1;
      }
    }
    this.ranked.set(key, ranked);
    return ranked;
  }

  /**
   * Up to k suggestions with their scores, best first, each typed + fill + generated text.
   * @returns {Array<[string, number]>}
   */
  completeScored(typed, k) {
    if (k <= 0 || !this.urls) return [];
    const { fill, canonical } = splitTyped(typed);
    const history = [...Array(this.order - 1).fill(BOS), ...Array.from(canonical)];
    let beams = [{ score: 1, symbols: history, text: "" }];
    /** @type {Map<string, number>} */
    const finished = new Map();
    for (let step = 0; step < this.maxChars; step++) {
      const candidates = [];
      beams.forEach((beam, b) => {
        for (const [s, x] of this.rankedNext(beam.symbols)) candidates.push({ score: beam.score * s, b, x });
      });
      candidates.sort((p, q) => (p.score > q.score ? -1 : p.score < q.score ? 1 : p.b - q.b
        || compareCodePoints(p.x, q.x)));
      const chosen = [];
      for (const { score, b, x } of candidates) {
        const { text, symbols } = beams[b];
        if (x === EOS || (BOUNDARY_CHARS.includes(x) && text)) {
          if (text && !junk(canonical, text)) finished.set(text, (finished.get(text) ?? 0) + score);
          continue;
        }
        if (junk(canonical, text + x, false)) continue;
        chosen.push({ score, symbols: [...symbols, x], text: text + x });
        if (chosen.length === this.beamWidth) break;
      }
      if (!chosen.length) break;
      beams = chosen;
      if (finished.size >= k && beams[0].score < [...finished.values()].sort((a, b) => b - a)[k - 1]) break;
    }
    return [...finished].sort(byScoreThenText).slice(0, k).map(([text, score]) => [typed + fill + text, score]);
  }
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
  const score = new Map();
  for (const [text, logProb] of model) score.set(text, weight * Math.exp(logProb));
  for (const [text, s] of personal) score.set(text, (score.get(text) ?? 0) + (1 - weight) * s);
  return [...score].sort(byScoreThenText).slice(0, k).map(([text]) => text);
}
