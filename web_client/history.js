/**
 * Everything the page keeps on the device, in one IndexedDB database; nothing here is sent.
 *
 * Stores: `visits` (the local history: {id, url, visitedAt, trained}), `outbox` (at most one
 * trained but unsent update, kept until the server accepts it) and `meta` (client id, counters,
 * the last model description so the page can start offline).
 */

import { HISTORY_DB_NAME } from "./constants.js";

const VERSION = 1;
const PENDING_KEY = "pending";

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

  deleteVisit(id) {
    return this.write("visits", (store) => done(store.delete(id)));
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
