// Hashcash over SHA-256 (WebCrypto): the browser's half of server/identity.py's WorkPuzzles.
// An honest browser pays this once at enrollment; a script inventing ids pays it per id.

const encoder = new TextEncoder();

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
  for (let counter = 0; counter < limit; counter++) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(`${puzzle}:${counter}`)));
    if (leadingZeroBits(digest) >= difficulty) return { counter: String(counter), tried: counter + 1 };
    if (onProgress && counter % 4096 === 4095) onProgress(counter + 1);
  }
  throw new Error(`no solution below ${limit}`);
}
