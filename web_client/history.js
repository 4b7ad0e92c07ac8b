/**
 * Everything the page keeps on the device, in one IndexedDB database; nothing here is sent.
 *
 * Stores: `visits` (the local history: {id, url, visitedAt, trained}), `outbox` (at most one
 * trained but unsent update, kept until the server accepts it) and `meta` (client id, counters,
 * the last model description so the page can start offline).
 */

import { HISTORY_DB_NAME } from "./constants.js";
import { normalizeUrl } from "./normalize.js";

const VERSION = 1;
const PENDING_KEY = "pending";
// A web address: dotted host labels ending in a TLD of letters (or punycode), or an IPv4 address;
// then an optional port and path. "redd" or "hello world" are searches, not visits.
const WEB_ADDRESS = /^(?:(?:[\p{L}\p{N}-]+\.)+(?:\p{L}{2,63}|xn--[a-z0-9-]+)|(?:\d{1,3}\.){3}\d{1,3})(?::\d{1,5})?(?:[/?].*)?$/u;

/**
 * The canonical URL a visit records for typed text, or null when the text is not a web address,
 * so history (and training) only ever holds addresses someone could actually have visited.
 */
export function visitableUrl(text) {
  const url = normalizeUrl(text);
  return url !== null && WEB_ADDRESS.test(url) ? url : null;
}

/** A promise for an IDBRequest's result. */
function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

/** A promise that settles when a transaction commits. */
function committed(transaction) {
  return new Promise((resolve, reject) => {
    transaction.oncomplete = () => resolve();
    transaction.onerror = transaction.onabort = () => reject(transaction.error);
  });
}

export class History {
  /** @param {IDBDatabase} db */
  constructor(db) {
    this.db = db;
  }

  /** Open (and on first use create) the database. */
  static async open(name = HISTORY_DB_NAME) {
    const request = indexedDB.open(name, VERSION);
    request.onupgradeneeded = () => {
      const db = request.result;
      db.createObjectStore("visits", { keyPath: "id", autoIncrement: true });
      db.createObjectStore("outbox");
      db.createObjectStore("meta");
    };
    return new History(await done(request));
  }

  /** Run fn(store) in one transaction and resolve with its value once committed. */
  async write(storeName, fn) {
    const transaction = this.db.transaction(storeName, "readwrite");
    const value = await fn(transaction.objectStore(storeName));
    await committed(transaction);
    return value;
  }

  read(storeName, fn) {
    return fn(this.db.transaction(storeName, "readonly").objectStore(storeName));
  }

  /** Record a visited URL; returns its id. */
  addVisit(url) {
    return this.write("visits", (store) => done(store.add({ url, visitedAt: Date.now(), trained: false })));
  }

  /** Every visit, newest first. */
  async listVisits() {
    const visits = await this.read("visits", (store) => done(store.getAll()));
    return visits.reverse();
  }

  /** Delete visits by id (all visits of one URL, say). */
  deleteVisits(ids) {
    return this.write("visits", async (store) => {
      for (const id of ids) await done(store.delete(id));
    });
  }

  /** Put back visits exactly as listVisits returned them (ids included): the undo of a clear. */
  restoreVisits(visits) {
    return this.write("visits", async (store) => {
      for (const visit of visits) await done(store.put(visit));
    });
  }

  clearVisits() {
    return this.write("visits", (store) => done(store.clear()));
  }

  /** Flag visits as used by a training run, so only newer ones count towards the next. */
  markTrained(ids) {
    return this.write("visits", async (store) => {
      for (const id of ids) {
        const visit = await done(store.get(id));
        if (visit) await done(store.put({ ...visit, trained: true }));
      }
    });
  }

  getMeta(key) {
    return this.read("meta", (store) => done(store.get(key)));
  }

  setMeta(key, value) {
    return this.write("meta", (store) => done(store.put(value, key)));
  }

  /** The trained update waiting to be uploaded, or undefined. */
  getPending() {
    return this.read("outbox", (store) => done(store.get(PENDING_KEY)));
  }

  /** Keep an update until the server accepts it (a newer one replaces it). */
  putPending(update) {
    return this.write("outbox", (store) => done(store.put(update, PENDING_KEY)));
  }

  clearPending() {
    return this.write("outbox", (store) => done(store.delete(PENDING_KEY)));
  }
}
