/**
 * Bundle files in Cache Storage, each checked against the manifest's sha256 with WebCrypto.
 *
 * Files are addressed by their immutable /api/files/<sha256> URL, so a new round downloads only
 * the files whose hash changed (in practice: weights.safetensors). Without Cache Storage the
 * page still works, downloading every time.
 */

import { MODEL_CACHE_NAME, RUNTIME_CACHE_NAME } from "./constants.js";

export class IntegrityError extends Error {}

/** Bytes that crossed the network for a response: its Content-Length, which for a gzip-encoded
 * body is the compressed size, else the decoded size. */
function sentBytes(response, bytes) {
  return Number(response.headers.get("Content-Length")) || bytes.byteLength;
}

/** Lower-case hex sha256 of bytes. */
export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function openCache(name = MODEL_CACHE_NAME) {
  try {
    return await caches.open(name);
  } catch (error) {
    console.warn("Cache Storage unavailable, downloading model files every time:", error);
    return null;
  }
}

/**
 * The verified bytes of one bundle file of a model, from the cache or the network.
 * @param {import("./protocol.js").ModelInfo} model
 * @param {string} name a key of model.files, e.g. "weights.safetensors"
 * @returns {Promise<{bytes: ArrayBuffer, downloaded: number}>} downloaded: bytes sent over the network (0 on a hit)
 * @throws {IntegrityError} when the server's bytes do not hash to the manifest's sha256
 */
export async function fetchVerified(model, name) {
  const url = model.files[name];
  const expected = model.manifest.files[name]?.sha256;
  if (!url || !expected) throw new IntegrityError(`model ${model.version} lists no ${name}`);
  const cache = await openCache();
  const hit = await cache?.match(url);
  if (hit) {
    const bytes = await hit.arrayBuffer();
    if (await sha256Hex(bytes) === expected) return { bytes, downloaded: 0 };
    await cache.delete(url); // corrupted cache entry: fetch it again
  }
  const response = await fetch(url);
  if (!response.ok) throw new Error(`downloading ${name} failed: HTTP ${response.status}`);
  const bytes = await response.arrayBuffer();
  const actual = await sha256Hex(bytes);
  if (actual !== expected) {
    throw new IntegrityError(`${name} is corrupt: sha256 ${actual.slice(0, 12)}…, manifest says ${expected.slice(0, 12)}…`);
  }
  await cache?.put(url, new Response(bytes, { headers: { "Content-Type": "application/octet-stream" } }));
  return { bytes, downloaded: sentBytes(response, bytes) };
}

/**
 * Bytes of a runtime file whose URL names its version (onnxruntime-web's wasm), kept in Cache
 * Storage so the completion and training workers, and later visits, download it only once.
 * @returns {Promise<{bytes: ArrayBuffer, downloaded: number}>}
 */
export async function fetchRuntime(url) {
  const cache = await openCache(RUNTIME_CACHE_NAME);
  const hit = await cache?.match(url);
  if (hit) return { bytes: await hit.arrayBuffer(), downloaded: 0 };
  const response = await fetch(url);
  if (!response.ok) throw new Error(`downloading ${url} failed: HTTP ${response.status}`);
  const bytes = await response.arrayBuffer();
  await cache?.put(url, new Response(bytes, { headers: { "Content-Type": "application/wasm" } }));
  return { bytes, downloaded: sentBytes(response, bytes) };
}

/** Drop cached files that the given model no longer uses (older rounds' weights). */
export async function pruneCache(model) {
  const cache = await openCache();
  if (!cache) return;
  const keep = new Set(Object.values(model.files).map((url) => new URL(url, location.href).href));
  for (const request of await cache.keys()) {
    if (!keep.has(request.url)) await cache.delete(request);
  }
}
