/**
 * Secure aggregation in the browser: the JS twin of privacy/ (primitives.py, graph.py,
 * quantize.py, messages.py, secagg.py), same bytes for the same inputs, WebCrypto only.
 *
 * - X25519 key agreement -> HKDF-SHA256 (empty salt, info "fedurl-secagg-v1:<label>:<round>").
 * - AES-256-GCM share messages: nonce(12) | ciphertext | tag(16).
 * - Mask PRG: AES-256-CTR under the seed, counter block 0, keystream as little-endian words.
 * - Shamir shares: the audited npm `shamir-secret-sharing` 0.0.4, vendored under vendor/ with its
 *   one bare import made relative (module workers cannot use import maps); a test checks the
 *   copy against node_modules.
 * - Messages: the layout of privacy/messages.py and docs/PROTOCOL.md ("Secure aggregation").
 *
 * No DOM: runs in a page or a (module) Web Worker. Not wired to HTTP yet.
 */

import { split as shamirSplit } from "./vendor/shamir-secret-sharing/index.js";

const LABEL_PREFIX = "fedurl-secagg-v1";
const MAGIC = [0x46, 0x53, 0x41, 0x31]; // "FSA1"
const HEADER_BYTES = 20;
export const SERVER = 0xffffffff;
const SHARE_BYTES = 33;
const KIND_B = 0;
const KIND_SK = 1;
// PKCS#8 wrapping of a raw X25519 private key (RFC 8410): WebCrypto imports no raw private keys.
const PKCS8_X25519 = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20];
const MAX_RANDOM_BYTES = 65536; // crypto.getRandomValues' limit per call
const EXP_MINUS_1 = Math.exp(-1);
const ROUNDING_TRIES = 64; // privacy.quantize: conditional rounding's tries before rounding toward zero
const NORM_SLACK = 1 - 2 ** -30; // bound^2 times this absorbs the float sum of squares' error
const MAX_DIMS = 2 ** 23; // ... for vectors up to this long

export const Type = Object.freeze({
  CONFIG: 0, ADVERTISE: 1, ROSTER: 2, SHARES: 3, SHARES_FOR: 4, MASKED_INPUT: 5, UNMASK_REQUEST: 6, UNMASK: 7,
});

/** @typedef {Uint8Array<ArrayBuffer>} Bytes bytes WebCrypto accepts (not over a SharedArrayBuffer) */

export class ProtocolError extends Error {}
export class RoundAborted extends ProtocolError {}

const subtle = globalThis.crypto.subtle;

/** @param {number | bigint} roundId @returns {bigint} */
function roundBig(roundId) {
  const big = BigInt(roundId);
  if (big < 0n || big >= 1n << 63n) throw new RangeError(`round id ${roundId} out of range`);
  return big;
}

/** HKDF's info bytes: label and round id (privacy.primitives.info_for). */
export function infoFor(label, roundId) {
  if (!/^[\x20-\x39\x3b-\x7e]+$/.test(label)) throw new Error(`bad label ${label}`);
  return new TextEncoder().encode(`${LABEL_PREFIX}:${label}:${roundBig(roundId)}`);
}

/**
 * HKDF-SHA256(secret, salt = empty, info = infoFor(label, roundId)) -> 32 bytes.
 * @param {Bytes} secret @param {string} label @param {number|bigint} roundId
 * @returns {Promise<Bytes>}
 */
export async function hkdf(secret, label, roundId) {
  const key = await subtle.importKey("raw", secret, "HKDF", false, ["deriveBits"]);
  const bits = await subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: infoFor(label, roundId) }, key, 256);
  return new Uint8Array(bits);
}

function b64urlDecode(text) {
  const plain = atob(text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4));
  return Uint8Array.from(plain, (c) => c.charCodeAt(0));
}

/** @param {Bytes} raw @returns {Promise<CryptoKey>} */
export function importPrivate(raw) {
  if (raw.length !== 32) throw new Error("an X25519 private key is 32 bytes");
  const pkcs8 = new Uint8Array(48);
  pkcs8.set(PKCS8_X25519);
  pkcs8.set(raw, 16);
  return subtle.importKey("pkcs8", pkcs8, { name: "X25519" }, false, ["deriveBits"]);
}

/**
 * A fresh X25519 key pair: raw private (32 bytes, to be secret-shared), raw public, and the key.
 * @returns {Promise<{privateRaw: Bytes, publicRaw: Bytes, key: CryptoKey}>}
 */
export async function generateKeyPair() {
  const pair = /** @type {CryptoKeyPair} */ (await subtle.generateKey({ name: "X25519" }, true, ["deriveBits"]));
  const publicRaw = new Uint8Array(await subtle.exportKey("raw", pair.publicKey));
  const jwk = await subtle.exportKey("jwk", pair.privateKey);
  return { privateRaw: b64urlDecode(jwk.d), publicRaw, key: pair.privateKey };
}

/** The raw public key of a raw private key. @param {Bytes} privateRaw */
export async function publicOf(privateRaw) {
  const pkcs8 = new Uint8Array(48);
  pkcs8.set(PKCS8_X25519);
  pkcs8.set(privateRaw, 16);
  const key = await subtle.importKey("pkcs8", pkcs8, { name: "X25519" }, true, ["deriveBits"]);
  const jwk = await subtle.exportKey("jwk", key);
  return b64urlDecode(jwk.x);
}

/**
 * X25519(private, peerPublic) through hkdf(): the same 32 bytes on both ends.
 * @param {CryptoKey|Bytes} privateKey @param {Bytes} peerPublic
 * @param {string} label @param {number|bigint} roundId
 */
export async function agree(privateKey, peerPublic, label, roundId) {
  const own = privateKey instanceof Uint8Array ? await importPrivate(privateKey) : privateKey;
  const peer = await subtle.importKey("raw", peerPublic, { name: "X25519" }, false, []);
  const shared = await subtle.deriveBits({ name: "X25519", public: peer }, own, 256);
  return hkdf(new Uint8Array(shared), label, roundId);
}

/**
 * AES-256-GCM: nonce (random unless given) | ciphertext | tag.
 * @param {Bytes} key @param {Bytes} plaintext @param {Bytes} aad @param {Bytes} [nonce]
 */
export async function encrypt(key, plaintext, aad, nonce) {
  const iv = nonce ?? crypto.getRandomValues(new Uint8Array(12));
  const aes = await subtle.importKey("raw", key, "AES-GCM", false, ["encrypt"]);
  const sealed = new Uint8Array(await subtle.encrypt({ name: "AES-GCM", iv, additionalData: aad, tagLength: 128 },
    aes, plaintext));
  const out = new Uint8Array(12 + sealed.length);
  out.set(iv);
  out.set(sealed, 12);
  return out;
}

/** Inverse of encrypt(); rejects on any tampering. @param {Bytes} key @param {Bytes} blob @param {Bytes} aad */
export async function decrypt(key, blob, aad) {
  if (blob.length < 28) throw new ProtocolError("ciphertext too short");
  const aes = await subtle.importKey("raw", key, "AES-GCM", false, ["decrypt"]);
  return new Uint8Array(await subtle.decrypt({ name: "AES-GCM", iv: blob.subarray(0, 12),
    additionalData: aad, tagLength: 128 }, aes, blob.subarray(12)));
}

/** The first count bytes of AES-256-CTR keystream under seed, counter block starting at 0.
 * @param {Bytes} seed @param {number} count */
export async function prgBytes(seed, count) {
  if (seed.length !== 32) throw new Error("a PRG seed is 32 bytes");
  const aes = await subtle.importKey("raw", seed, "AES-CTR", false, ["encrypt"]);
  return new Uint8Array(await subtle.encrypt({ name: "AES-CTR", counter: new Uint8Array(16), length: 128 },
    aes, new Uint8Array(count)));
}

/** count little-endian words of width 2 or 4 bytes from the PRG. */
export async function prgWords(seed, count, width) {
  const bytes = await prgBytes(seed, count * width);
  const view = new DataView(bytes.buffer);
  const out = width === 2 ? new Uint16Array(count) : new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = width === 2 ? view.getUint16(2 * i, true) : view.getUint32(4 * i, true);
  return out;
}

/** The seeded Fisher-Yates shuffle of 0..n-1 (privacy.graph.permutation). */
export async function permutation(roundSeed, roundId, n) {
  const key = await hkdf(roundSeed, "graph", roundId);
  let words = await prgWords(key, 2 * n + 16, 4);
  let used = 0;
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const span = i + 1;
    const limit = 2 ** 32 - (2 ** 32 % span);
    let word;
    for (;;) {
      if (used === words.length) words = await prgWords(key, 2 * words.length, 4);
      word = words[used++];
      if (word < limit) break;
    }
    const j = word % span;
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

/** Each client's sorted neighbours in the Harary graph (privacy.graph.neighbours). */
export async function neighbourGraph(roundSeed, roundId, n, degree) {
  if (degree >= n - 1) return Array.from({ length: n }, (_, u) => [...Array(n).keys()].filter((v) => v !== u));
  if (degree < 2 || degree % 2) throw new Error("a sparse graph's degree must be even and at least 2");
  const ring = await permutation(roundSeed, roundId, n);
  const position = new Map(ring.map((client, p) => [client, p]));
  const half = degree / 2;
  return Array.from({ length: n }, (_, u) => {
    const out = [];
    for (let d = -half; d <= half; d++) if (d) out.push(ring[(((position.get(u) + d) % n) + n) % n]);
    return out.sort((a, b) => a - b);
  });
}

/** Uniform doubles in [0, 1) from the CSPRNG (32 bits each). */
function uniforms(count) {
  const words = new Uint32Array(count);
  for (let at = 0; at < count; at += MAX_RANDOM_BYTES / 4) {
    crypto.getRandomValues(words.subarray(at, Math.min(count, at + MAX_RANDOM_BYTES / 4)));
  }
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) out[i] = words[i] / 2 ** 32;
  return out;
}

/** Uniform integers from crypto.getRandomValues, fetched 64 KiB at a time (privacy.ddg.CryptoRandom). */
export class RandomWords {
  constructor() {
    this.words = new Uint32Array(MAX_RANDOM_BYTES / 4);
    this.at = this.words.length;
  }
  /** A uniform 32-bit word. */
  next() {
    if (this.at === this.words.length) {
      crypto.getRandomValues(this.words);
      this.at = 0;
    }
    return this.words[this.at++];
  }
  /** A uniform integer in [0, 2^53). */
  draw53() { return (this.next() >>> 11) * 2 ** 32 + this.next(); }
  /** A uniform integer in [0, bound), bound <= 2^32, by rejection: no modulo bias. */
  below(bound) {
    const last = 2 ** 32 - (2 ** 32 % bound) - 1;
    for (;;) {
      const word = this.next();
      if (word <= last) return word % bound;
    }
  }
  /** A fair coin. */
  coin() { return (this.next() & 1) === 1; }
}

/**
 * Bernoulli(p) exactly for the double p in [0, 1] (privacy.ddg.bernoulli): a uniform U < p,
 * decided 53 bits at a time; a tie on one digit (probability 2^-53) draws the next.
 * @param {number} p @param {RandomWords} random
 */
export function bernoulli(p, random) {
  let rest = p;
  while (rest > 0) {
    const scaled = rest * 2 ** 53;
    const digit = Math.floor(scaled);
    const k = random.draw53();
    if (k !== digit) return k < digit;
    rest = scaled - digit;
  }
  return false;
}

/** P(y) proportional to exp(-|y|/t): Canonne, Kamath, Steinke 2020, Algorithm 2 (privacy.ddg). */
function discreteLaplace(t, random) {
  for (;;) {
    const u = random.below(t);
    if (!bernoulli(Math.exp(-u / t), random)) continue;
    let v = 0;
    while (bernoulli(EXP_MINUS_1, random)) v++;
    const x = u + t * v;
    const negative = random.coin();
    if (negative && x === 0) continue; // -0 and +0 are one value: refuse one of them
    return negative ? -x : x;
  }
}

/**
 * count draws from the discrete Gaussian N_Z(0, sigma^2): Canonne, Kamath, Steinke 2020,
 * Algorithm 3, as privacy/ddg.py (whose docstring bounds what float64 exp() changes).
 * @param {number} sigma @param {number} count @param {RandomWords} [random]
 */
export function discreteGaussian(sigma, count, random = new RandomWords()) {
  if (!(Number.isFinite(sigma) && sigma > 0 && sigma < 2 ** 32)) throw new RangeError(`bad sigma ${sigma}`);
  const sigma2 = sigma * sigma;
  const t = Math.floor(sigma) + 1;
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    for (;;) {
      const y = discreteLaplace(t, random);
      const gap = Math.abs(y) - sigma2 / t;
      if (bernoulli(Math.exp(-(gap * gap) / (2 * sigma2)), random)) {
        out[i] = y;
        break;
      }
    }
  }
  return out;
}

/** The delta scaled down to L2 norm <= bound (float64). @param {ArrayLike<number>} delta */
export function clipDelta(delta, bound) {
  let sum = 0;
  for (let i = 0; i < delta.length; i++) sum += delta[i] * delta[i];
  const norm = Math.sqrt(sum);
  const factor = norm > bound ? bound / norm : 1;
  return Float64Array.from(delta, (v) => v * factor);
}

/**
 * The L2 norm a clipped, scaled, conditionally rounded input never exceeds, in integer units
 * (privacy.quantize.norm_bound: the same operations in the same order, so the same double).
 */
export function normBound(clip, scale, dims) {
  if (!(dims >= 0 && dims <= MAX_DIMS)) throw new RangeError(`at most ${MAX_DIMS} values per input`);
  const cs = clip * scale;
  return Math.sqrt(cs * cs + dims / 4 + cs + Math.sqrt(dims) / 2);
}

/**
 * Stochastic rounding repeated until the L2 norm is within bound; toward zero after
 * ROUNDING_TRIES failures (privacy.quantize.conditional_round, which says why).
 * @param {Float64Array} values @param {number} bound
 */
export function conditionalRound(values, bound) {
  const limit = bound * bound * NORM_SLACK;
  const out = new Float64Array(values.length);
  const fill = (round) => {
    let sum = 0;
    for (let i = 0; i < values.length; i++) {
      const q = round(i);
      out[i] = q;
      sum += q * q;
    }
    return sum;
  };
  for (let attempt = 0; attempt < ROUNDING_TRIES; attempt++) {
    const u = uniforms(values.length);
    if (fill((i) => Math.floor(values[i] + u[i])) <= limit) return out;
  }
  if (fill((i) => Math.trunc(values[i])) > limit) throw new RangeError(`values cannot round within the norm ${bound}`);
  return out;
}

/**
 * A client's input mod 2^32 (reduce to bits later): clip, scale, conditional stochastic rounding,
 * and the client's share of the noise, discrete Gaussian of std noiseStd (privacy/dp.py), as in
 * privacy.quantize.encode.
 */
export function encodeInput(delta, bound, scale, noiseStd = 0) {
  const scaled = clipDelta(delta, bound);
  for (let i = 0; i < scaled.length; i++) scaled[i] *= scale;
  const rounded = conditionalRound(scaled, normBound(bound, scale, scaled.length));
  if (noiseStd > 0) {
    const noise = discreteGaussian(noiseStd, scaled.length);
    for (let i = 0; i < scaled.length; i++) rounded[i] += noise[i];
  }
  return Uint32Array.from(rounded); // ToUint32: negative values wrap mod 2^32
}

function header(kind, roundId, sender) {
  const out = new Uint8Array(HEADER_BYTES);
  out.set(MAGIC);
  const view = new DataView(out.buffer);
  view.setUint8(4, kind);
  view.setBigUint64(8, roundBig(roundId), true);
  view.setUint32(16, sender, true);
  return out;
}

/** @param {Uint8Array[]} parts @returns {Bytes} */
function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function u32s(...values) {
  const out = new Uint8Array(4 * values.length);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => view.setUint32(4 * i, v, true));
  return out;
}

/** Bounds-checked reads over a message (privacy.messages.Reader). */
class Reader {
  /** @param {Uint8Array} bytes @param {number} offset */
  constructor(bytes, offset = 0) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.offset = offset;
  }
  /** @param {number} count @returns {Bytes} */
  take(count) {
    if (this.offset + count > this.bytes.length) throw new ProtocolError("message truncated");
    const out = this.bytes.slice(this.offset, this.offset + count);
    this.offset += count;
    return out;
  }
  u8() { return this.take(1)[0]; }
  u32() { const v = this.view.getUint32(this.offset, true); this.take(4); return v; }
  f64() { const v = this.view.getFloat64(this.offset, true); this.take(8); return v; }
  end() { if (this.offset !== this.bytes.length) throw new ProtocolError("trailing bytes"); }
}

/** [sender, reader] after checking magic, type and round id.
 * @returns {[number, Reader]} */
function openMessage(bytes, kind, roundId) {
  if (bytes.length < HEADER_BYTES || MAGIC.some((m, i) => bytes[i] !== m)) {
    throw new ProtocolError("not a secure-aggregation message");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes[4] !== kind) throw new ProtocolError(`expected message type ${kind}, got ${bytes[4]}`);
  if (roundId !== undefined && view.getBigUint64(8, true) !== roundBig(roundId)) {
    throw new ProtocolError("message is for another round");
  }
  return [view.getUint32(16, true), new Reader(bytes, HEADER_BYTES)];
}

/**
 * Parse CONFIG (privacy.messages.RoundConfig).
 * @param {Uint8Array} bytes
 */
export function decodeConfig(bytes) {
  const [, reader] = openMessage(bytes, Type.CONFIG);
  const roundId = new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(8, true);
  const [cohortSize, degree, threshold, minSurvivors] = [reader.u32(), reader.u32(), reader.u32(), reader.u32()];
  const bits = reader.u8();
  const width = reader.u8();
  reader.take(2);
  const numParams = reader.u32();
  const scale = reader.f64();
  const clip = reader.f64();
  const noiseStd = reader.f64();
  const graphSeed = reader.take(32);
  reader.end();
  if (width !== (bits <= 16 ? 2 : 4)) throw new ProtocolError("word width does not match bits");
  if (!(scale > 0 && clip > 0 && Number.isFinite(scale) && Number.isFinite(clip) && noiseStd >= 0
    && noiseStd < 2 ** 32)) { // privacy.secagg.check_config; NaN would skip the noise
    throw new ProtocolError("scale and clip must be finite and positive, noise std in [0, 2^32)");
  }
  if (cohortSize < 3 || minSurvivors < 3 || minSurvivors > cohortSize) {
    throw new ProtocolError("a secure cohort needs at least 3 clients");
  }
  const peers = Math.min(degree, cohortSize - 1); // privacy.secagg.check_config
  if (!(threshold >= 2 && Math.floor(peers / 2) < threshold && threshold <= peers && peers <= 255)) {
    throw new ProtocolError("threshold must be above half the degree and at most the degree");
  }
  return { roundId, cohortSize, degree, threshold, minSurvivors, bits, width, numParams, scale, clip, noiseStd,
    graphSeed };
}

/** Associated data of a share ciphertext (privacy.secagg.share_aad). */
function shareAad(roundId, sender, recipient) {
  const out = new Uint8Array(20);
  out.set(MAGIC);
  const view = new DataView(out.buffer);
  view.setBigUint64(4, roundBig(roundId), true);
  view.setUint32(12, sender, true);
  view.setUint32(16, recipient, true);
  return out;
}

function equalBytes(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** One client's side of one round (privacy.secagg.SecAggClient); create() then the four steps. */
export class SecAggClient {
  /** @param {Uint8Array} configBytes the CONFIG message @param {number} index in the cohort */
  static async create(configBytes, index) {
    const config = decodeConfig(configBytes);
    if (!(index >= 0 && index < config.cohortSize)) throw new ProtocolError(`index ${index} not in the cohort`);
    const graph = await neighbourGraph(config.graphSeed, config.roundId, config.cohortSize, config.degree);
    return new SecAggClient(config, index, new Set(graph[index]), await generateKeyPair(), await generateKeyPair());
  }

  constructor(config, index, neighbours, cKeys, sKeys) {
    this.config = config;
    this.index = index;
    this.neighbours = neighbours;
    this.cKeys = cKeys;
    this.sKeys = sKeys;
    /** @type {Map<number, [Bytes, Bytes]>} neighbour -> [c_pk, s_pk] */
    this.peers = new Map();
    /** @type {Map<number, [Bytes, Bytes]>} neighbour in U2 -> [s_sk share, b share] */
    this.received = new Map();
    this.bSeed = null;
    this.phase = Type.ADVERTISE;
  }

  enter(phase, following) {
    if (this.phase !== phase) throw new ProtocolError(`client is in phase ${this.phase}, not ${phase}`);
    this.phase = following;
  }

  /** ADVERTISE: the two public keys. */
  advertise() {
    this.enter(Type.ADVERTISE, Type.ROSTER);
    return concat([header(Type.ADVERTISE, this.config.roundId, this.index), this.cKeys.publicRaw, this.sKeys.publicRaw]);
  }

  /** ROSTER in, SHARES out. @param {Uint8Array} rosterBytes */
  async shareKeys(rosterBytes) {
    this.enter(Type.ROSTER, Type.SHARES_FOR);
    const { roundId, cohortSize, minSurvivors, threshold } = this.config;
    const [, reader] = openMessage(rosterBytes, Type.ROSTER, roundId);
    const roster = new Map();
    const seen = new Set();
    for (let count = reader.u32(); count > 0; count--) {
      const index = reader.u32();
      const [cPk, sPk] = [reader.take(32), reader.take(32)];
      if (index >= cohortSize || roster.has(index)) throw new ProtocolError(`roster entry ${index} repeated`);
      const keyId = Array.from(cPk).join() + "/" + Array.from(sPk).join();
      if (seen.has(keyId)) throw new ProtocolError("two roster entries share a key");
      seen.add(keyId);
      roster.set(index, [cPk, sPk]);
    }
    reader.end();
    const own = roster.get(this.index);
    if (!own || !equalBytes(own[0], this.cKeys.publicRaw) || !equalBytes(own[1], this.sKeys.publicRaw)) {
      throw new ProtocolError("the roster does not carry this client's own keys");
    }
    if (roster.size < minSurvivors) throw new RoundAborted(`only ${roster.size} clients advertised keys`);
    for (const v of [...this.neighbours].sort((a, b) => a - b)) if (roster.has(v)) this.peers.set(v, roster.get(v));
    if (this.peers.size < threshold) throw new RoundAborted(`${this.peers.size} neighbours left, threshold ${threshold}`);
    this.bSeed = crypto.getRandomValues(new Uint8Array(32));
    const sShares = await shamirSplit(this.sKeys.privateRaw, this.peers.size, threshold);
    const bShares = await shamirSplit(this.bSeed, this.peers.size, threshold);
    const parts = [header(Type.SHARES, roundId, this.index), u32s(this.peers.size)];
    let i = 0;
    for (const [v, [cPk]] of this.peers) {
      const key = await agree(this.cKeys.key, cPk, "enc", roundId);
      const plain = concat([u32s(this.index, v), Uint8Array.of(SHARE_BYTES), sShares[i], bShares[i]]);
      const blob = await encrypt(key, plain, shareAad(roundId, this.index, v));
      parts.push(u32s(v, blob.length), blob);
      i++;
    }
    return concat(parts);
  }

  /**
   * SHARES_FOR in, MASKED_INPUT out: the quantized delta under self and pairwise masks.
   * @param {Uint8Array} sharesBytes @param {ArrayLike<number>} delta all parameters, flattened
   */
  async maskedInput(sharesBytes, delta) {
    this.enter(Type.SHARES_FOR, Type.UNMASK_REQUEST);
    const { roundId, threshold, numParams, bits, width } = this.config;
    const [, reader] = openMessage(sharesBytes, Type.SHARES_FOR, roundId);
    for (let count = reader.u32(); count > 0; count--) {
      const sender = reader.u32();
      const blob = reader.take(reader.u32());
      if (!this.peers.has(sender) || this.received.has(sender)) {
        throw new ProtocolError(`shares from ${sender}, not an expected neighbour`);
      }
      const key = await agree(this.cKeys.key, this.peers.get(sender)[0], "enc", roundId);
      let plain;
      try {
        plain = await decrypt(key, blob, shareAad(roundId, sender, this.index));
      } catch {
        throw new ProtocolError(`shares from ${sender} do not authenticate`);
      }
      const head = concat([u32s(sender, this.index), Uint8Array.of(SHARE_BYTES)]);
      if (plain.length !== 75 || !equalBytes(plain.subarray(0, 9), head)) {
        throw new ProtocolError(`shares from ${sender} are malformed`);
      }
      this.received.set(sender, [plain.slice(9, 42), plain.slice(42, 75)]);
    }
    reader.end();
    if (this.received.size < threshold) {
      throw new RoundAborted(`shares from ${this.received.size} neighbours, threshold ${threshold}`);
    }
    if (delta.length !== numParams) throw new ProtocolError(`delta has ${delta.length} values, not ${numParams}`);
    const value = encodeInput(delta, this.config.clip, this.config.scale, this.config.noiseStd);
    const add = (mask, sign) => {
      for (let i = 0; i < numParams; i++) value[i] = value[i] + sign * mask[i];
    };
    add(await prgWords(this.bSeed, numParams, width), 1);
    for (const v of [...this.received.keys()].sort((a, b) => a - b)) {
      const seed = await agree(this.sKeys.key, this.peers.get(v)[1], "mask", roundId);
      add(await prgWords(seed, numParams, width), this.index < v ? 1 : -1);
    }
    const modulus = 2 ** bits - 1; // & with it reduces mod 2^bits (stored back as uint32)
    const words = width === 2 ? new Uint16Array(numParams) : new Uint32Array(numParams);
    for (let i = 0; i < numParams; i++) words[i] = value[i] & modulus;
    const body = new Uint8Array(8 + numParams * width);
    const view = new DataView(body.buffer);
    view.setUint8(0, bits);
    view.setUint8(1, width);
    view.setUint32(4, numParams, true);
    for (let i = 0; i < numParams; i++) {
      if (width === 2) view.setUint16(8 + 2 * i, words[i], true);
      else view.setUint32(8 + 4 * i, words[i], true);
    }
    return concat([header(Type.MASKED_INPUT, roundId, this.index), body]);
  }

  /** UNMASK_REQUEST in, UNMASK out: per neighbour in U2, one kind of share, never both. */
  unmask(requestBytes) {
    this.enter(Type.UNMASK_REQUEST, Type.UNMASK);
    const { roundId, minSurvivors } = this.config;
    const [, reader] = openMessage(requestBytes, Type.UNMASK_REQUEST, roundId);
    const survivors = Array.from({ length: reader.u32() }, () => reader.u32());
    const dropped = Array.from({ length: reader.u32() }, () => reader.u32());
    reader.end();
    const alive = new Set(survivors);
    const gone = new Set(dropped);
    if (alive.size !== survivors.length || gone.size !== dropped.length || dropped.some((v) => alive.has(v))) {
      throw new ProtocolError("survivor and dropped lists repeat or overlap");
    }
    if (alive.size < minSurvivors) {
      throw new RoundAborted(`refusing to unmask a sum of ${alive.size} inputs (minimum ${minSurvivors})`);
    }
    if (!alive.has(this.index)) throw new ProtocolError("this client is not listed as a survivor");
    const listed = [...alive, ...gone].filter((v) => this.neighbours.has(v)).sort((a, b) => a - b);
    const expected = [...this.received.keys()].sort((a, b) => a - b);
    if (!equalBytes(listed, expected)) {
      throw new ProtocolError("the request does not match the neighbours that shared keys");
    }
    const parts = [header(Type.UNMASK, roundId, this.index), u32s(expected.length)];
    for (const v of expected) {
      const [sShare, bShare] = this.received.get(v);
      const [kind, share] = alive.has(v) ? [KIND_B, bShare] : [KIND_SK, sShare];
      parts.push(u32s(v), Uint8Array.of(kind, share.length), share);
    }
    return concat(parts);
  }
}
