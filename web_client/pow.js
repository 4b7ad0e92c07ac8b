// Hashcash over SHA-256: the browser's half of server/identity.py's WorkPuzzles.
// An honest browser pays this once at enrollment; a script inventing ids pays it per id.
//
// SHA-256 is computed here in plain JavaScript (FIPS 180-4), not with WebCrypto: one
// `crypto.subtle.digest` call per candidate is asynchronous and managed about 80k hashes/s in
// Chromium, batched or not (3.2 s at 18 bits), while this loop is several times faster. The
// server verifies every solution with hashlib, and tests/web/test_pow.py checks this digest
// against WebCrypto's, so a slip here could only cost time, never let a wrong answer through.

const encoder = new TextEncoder();
/** Candidates tried between two yields to the event loop (keeps the page responsive). */
const POW_BATCH = 16384;

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);
const INITIAL = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
const W = new Uint32Array(64);

/**
 * One SHA-256 compression of the 64-byte block at `offset` into `state`.
 * @param {Uint32Array} state 8 words, updated in place
 * @param {Uint8Array} bytes
 * @param {number} offset
 */
function compress(state, bytes, offset) {
  for (let t = 0; t < 16; t++) {
    const i = offset + 4 * t;
    W[t] = (bytes[i] << 24) | (bytes[i + 1] << 16) | (bytes[i + 2] << 8) | bytes[i + 3];
  }
  for (let t = 16; t < 64; t++) {
    const a = W[t - 15], b = W[t - 2];
    const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
    const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
    W[t] = (W[t - 16] + s0 + W[t - 7] + s1) | 0;
  }
  let [a, b, c, d, e, f, g, h] = state;
  for (let t = 0; t < 64; t++) {
    const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
    const t1 = (h + S1 + ((e & f) ^ (~e & g)) + K[t] + W[t]) | 0;
    const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
    const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
    h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
  }
  state[0] += a; state[1] += b; state[2] += c; state[3] += d;
  state[4] += e; state[5] += f; state[6] += g; state[7] += h;
}

/**
 * SHA-256 of the first `length` bytes of `buffer`, padding in place (buffer holds room for it).
 * @param {Uint8Array} buffer message bytes, then at least 9 spare bytes up to a multiple of 64
 * @param {number} length
 * @param {Uint32Array} state 8 words to hash into (overwritten)
 * @returns {Uint32Array} state, now the digest as 8 big-endian words
 */
function digestInto(buffer, length, state) {
  const blocks = Math.ceil((length + 9) / 64);
  buffer.fill(0, length, blocks * 64);
  buffer[length] = 0x80;
  const bits = length * 8;
  const end = blocks * 64;
  buffer[end - 4] = (bits >>> 24) & 0xff;
  buffer[end - 3] = (bits >>> 16) & 0xff;
  buffer[end - 2] = (bits >>> 8) & 0xff;
  buffer[end - 1] = bits & 0xff;
  state.set(INITIAL);
  for (let offset = 0; offset < end; offset += 64) compress(state, buffer, offset);
  return state;
}

/**
 * SHA-256 of a byte string (under 2^29 bytes).
 * @param {Uint8Array} message
 * @returns {Uint8Array} 32 bytes
 */
export function sha256(message) {
  const buffer = new Uint8Array(Math.ceil((message.length + 9) / 64) * 64);
  buffer.set(message);
  const state = digestInto(buffer, message.length, new Uint32Array(8));
  const out = new Uint8Array(32);
  for (let i = 0; i < 8; i++) {
    out[4 * i] = state[i] >>> 24;
    out[4 * i + 1] = (state[i] >>> 16) & 0xff;
    out[4 * i + 2] = (state[i] >>> 8) & 0xff;
    out[4 * i + 3] = state[i] & 0xff;
  }
  return out;
}

/**
 * Leading zero bits of a digest given as 8 big-endian words.
 * @param {Uint32Array} words
 * @returns {number}
 */
function leadingZeroWords(words) {
  let bits = 0;
  for (const word of words) {
    if (word === 0) {
      bits += 32;
      continue;
    }
    return bits + Math.clz32(word);
  }
  return bits;
}

/**
 * Leading zero bits of a digest.
 * @param {Uint8Array} digest
 * @returns {number}
 */
export function leadingZeroBits(digest) {
  let bits = 0;
  for (const byte of digest) {
    if (byte === 0) {
      bits += 8;
      continue;
    }
    return bits + Math.clz32(byte) - 24;
  }
  return bits;
}

/**
 * The first decimal counter c such that SHA-256(`${puzzle}:${c}`) starts with `difficulty` zero bits.
 * @param {string} puzzle the server's signed puzzle text
 * @param {number} difficulty leading zero bits required
 * @param {{limit?: number, onProgress?: (tried: number) => void}} [options]
 * @returns {Promise<{counter: string, tried: number}>}
 */
export async function solvePuzzle(puzzle, difficulty, { limit = 2 ** 32, onProgress } = {}) {
  const prefix = encoder.encode(`${puzzle}:`);
  const buffer = new Uint8Array(Math.ceil((prefix.length + 20 + 9) / 64) * 64);
  const state = new Uint32Array(8);
  for (let start = 0; start < limit; start += POW_BATCH) {
    const end = Math.min(start + POW_BATCH, limit);
    for (let counter = start; counter < end; counter++) {
      const digits = String(counter);
      buffer.set(prefix);
      for (let i = 0; i < digits.length; i++) buffer[prefix.length + i] = digits.charCodeAt(i);
      if (leadingZeroWords(digestInto(buffer, prefix.length + digits.length, state)) >= difficulty) {
        return { counter: digits, tried: counter + 1 };
      }
    }
    if (onProgress) onProgress(end);
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  throw new Error(`no solution below ${limit}`);
}
