/**
 * Suggestions from the local history, as in every browser's URL bar: visited URLs that extend
 * what was typed, most visited first, then most recently visited. client.js rebuilds the index
 * from IndexedDB whenever the history changes, so a keystroke only searches memory; nothing
 * here leaves the device.
 *
 * Typed text is mapped like the completer maps it (normalize.js splitTyped), so "HTTPS://GitHub.com/py"
 * finds the visited "github.com/python/cpython" and suggests "HTTPS://GitHub.com/python/cpython":
 * every suggestion starts with exactly what was typed.
 */

import { normalizeUrl, splitTyped } from "./normalize.js";

/** Ranking of matches: more visits first, then the more recent last visit. */
const byVisitsThenRecency = (a, b) => b.visits - a.visits || b.lastVisit - a.lastVisit;

/**
 * Visits grouped by canonical URL, most recently visited first: what the page lists, one row
 * per address with its visit count (older records may hold raw text; they join their URL here).
 * @param {Array<{id?: number, url: string, visitedAt: number}>} visits
 * @returns {Array<{url: string, visits: number, lastVisit: number, ids: number[]}>}
 */
export function groupVisits(visits) {
  const byUrl = new Map();
  for (const { id, url: raw, visitedAt } of visits) {
    const url = normalizeUrl(raw);
    if (url === null) continue;
    const entry = byUrl.get(url) ?? { url, visits: 0, lastVisit: -Infinity, ids: [] };
    entry.visits += 1;
    entry.lastVisit = Math.max(entry.lastVisit, visitedAt);
    entry.ids.push(id);
    byUrl.set(url, entry);
  }
  return [...byUrl.values()].sort((a, b) => b.lastVisit - a.lastVisit);
}

export class HistoryIndex {
  /** @param {Array<{url: string, visitedAt: number}>} visits the local history, in any order */
  constructor(visits = []) {
    // Sorted by URL, so the URLs extending a prefix are one run that a binary search finds.
    this.entries = groupVisits(visits).sort((a, b) => (a.url < b.url ? -1 : a.url > b.url ? 1 : 0));
  }

  /** Index of the first entry whose URL is not below `prefix`. */
  firstAtOrAfter(prefix) {
    let low = 0, high = this.entries.length;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (this.entries[mid].url < prefix) low = mid + 1;
      else high = mid;
    }
    return low;
  }

  /**
   * Up to `limit` visited URLs longer than the typed text, best first, each as typed + the rest.
   * @param {string} typed the URL bar's text
   * @param {number} limit
   * @returns {string[]}
   */
  match(typed, limit) {
    const { fill, canonical } = splitTyped(typed);
    const best = []; // the `limit` best so far, ranked
    for (let i = this.firstAtOrAfter(canonical); i < this.entries.length; i++) {
      const entry = this.entries[i];
      if (!entry.url.startsWith(canonical)) break;
      if (entry.url.length === canonical.length) continue; // only what extends the typed text
      best.push(entry);
      best.sort(byVisitsThenRecency);
      if (best.length > limit) best.pop();
    }
    return best.map((entry) => typed + fill + entry.url.slice(canonical.length));
  }
}

/**
 * What the URL bar shows: history suggestions first, then the model's not already shown, at most k.
 * @param {string[]} history from HistoryIndex.match
 * @param {string[]} model the completer's suggestions, best first
 * @returns {Array<{text: string, source: "history"|"model"}>}
 */
export function mergeSuggestions(history, model, k) {
  const shown = new Set(history);
  return [...history.map((text) => ({ text, source: /** @type {const} */ ("history") })),
    ...model.filter((text) => !shown.has(text)).map((text) => ({ text, source: /** @type {const} */ ("model") }))]
    .slice(0, k);
}
