/**
 * Service worker: after the first visit the page starts without the server. It keeps the page,
 * its modules and onnxruntime-web's JavaScript (SHELL) in Cache Storage, network first so a new
 * client version shows at once, the cached copy when the network fails or the server answers 5xx.
 * Model files and ORT's wasm are not handled here: model_store.js already keeps them, verified,
 * in Cache Storage, and client.js restarts from the last model description in IndexedDB.
 *
 * Served at /sw.js so its scope is the whole origin. Responses keep the server's headers
 * (COOP/COEP/CORP), so a page started from the cache is still cross-origin isolated.
 * A classic script: it cannot import constants.js, and tests/web/test_offline.py checks that
 * SHELL lists every file a page load requests.
 */

const sw = /** @type {ServiceWorkerGlobalScope} */ (/** @type {unknown} */ (self));
const SHELL_CACHE = "fedurl-shell-v3";
const WORKER = "/static/worker.js";
const SHELL = [
  "/",
  "/favicon.ico",
  "/static/styles.css",
  "/static/manifest.webmanifest",
  "/static/icon.svg",
  "/static/main.js",
  "/static/auto_train.js",
  "/static/words.js",
  "/static/client.js",
  "/static/constants.js",
  "/static/api.js",
  "/static/history.js",
  "/static/history_index.js",
  "/static/normalize.js",
  "/static/model_store.js",
  "/static/protocol.js",
  "/static/pow.js",
  "/static/secagg.js",
  "/static/vendor/shamir-secret-sharing/index.js",
  "/static/vendor/shamir-secret-sharing/csprng.js",
  "/static/safetensors.js",
  "/static/update.js",
  WORKER,
  "/static/completer.js",
  "/static/infer_session.js",
  "/static/ngram.js",
  "/static/heap.js",
  "/static/tokenizer.js",
  "/static/trainer.js",
  "/ort/ort.wasm.min.mjs",
  "/ort/ort-wasm-simd-threaded.mjs",
];

sw.addEventListener("install", (event) => {
  event.waitUntil(caches.open(SHELL_CACHE).then((cache) => cache.addAll(SHELL)).then(() => sw.skipWaiting()));
});

sw.addEventListener("activate", (event) => {
  const stale = (name) => name.startsWith("fedurl-shell-") && name !== SHELL_CACHE;
  event.waitUntil(caches.keys()
    .then((names) => Promise.all(names.filter(stale).map((name) => caches.delete(name))))
    .then(() => sw.clients.claim()));
});

sw.addEventListener("fetch", (event) => {
  const { request } = event;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== location.origin) return;
  // Every navigation to the page shares one entry, whatever its ?settings, and so does worker.js,
  // whatever its ?threads= (the training worker's train_threads, client.js).
  const key = request.mode === "navigate" ? (url.pathname === "/" ? "/" : null)
    : (SHELL.includes(url.pathname) && (!url.search || url.pathname === WORKER) ? url.pathname : null);
  if (key !== null) event.respondWith(networkFirst(event, key));
  // Anything else (the API, the dashboard) goes to the network as if there were no worker.
});

/** The network's answer, stored for later; the stored one when the network or server fails. */
async function networkFirst(event, key) {
  const cache = await caches.open(SHELL_CACHE);
  let response = null;
  try {
    response = await fetch(event.request);
    if (response.ok) {
      event.waitUntil(cache.put(key, response.clone()));
      return response;
    }
  } catch {
    // offline or the server is down: the stored copy below
  }
  const stored = await cache.match(key);
  return stored ?? response ?? Response.error();
}
