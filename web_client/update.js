/**
 * The update body POSTed to /api/updates (docs/PROTOCOL.md): the JS twin of formats/update.py.
 *
 * Safetensors bytes (safetensors.js) with one delta per parameter in one encoding, F32, F16 or
 * Q8 (an I8 tensor P and an F32 tensor "P#scale", one scale per 64 values), and exactly six
 * string metadata fields. encodeUpdate writes what it is given; decodeUpdate refuses what the
 * server refuses, with the same error codes (tests/web/test_update_js.py checks both directions).
 */

import { WeightsFormatError, decode, encode, toF16 } from "./safetensors.js";

/** The metadata keys, in the order both codecs write them. */
export const METADATA_FIELDS = Object.freeze(["ticket", "client_id", "base_version", "num_examples", "loss_before",
  "loss_after"]);
const DELTA_DTYPES = ["F32", "F16", "Q8"]; // the encodings
const VALUE_DTYPES = ["F32", "F16", "I8"]; // their tensors' dtypes (Q8 adds F32 scales)
export const BLOCK = 64; // Q8 values per float32 scale
export const SCALE_SUFFIX = "#scale";
const Q8_MAX = 127;
const RANDOM_WORDS = 16384; // crypto.getRandomValues fills at most 65,536 bytes per call
const CLIENT_ID = /^[A-Za-z0-9_-]{8,64}$/;
const TICKET = /^[A-Za-z0-9_-]{1,128}$/;
const INTEGER = /^-?[0-9]{1,12}$/;
const DECIMAL = /^-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$/; // no "NaN", "1_0" or " 1"
const MAX_VERSION = 2 ** 31 - 1;
const MAX_LOSS = 1000;

/** A refused update; `code` is the protocol's stable error code. */
export class UpdateFormatError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/**
 * @typedef {{ticket: string, clientId: string, baseVersion: number, numExamples: number,
 *            lossBefore: number, lossAfter: number}} UpdateMeta
 * @typedef {{name: string, shape: number[], data: Float32Array}} Delta
 */

/**
 * The update body: deltas (F32, in manifest order) sent as `dtype`, then the six metadata fields.
 * @param {Delta[]} delta
 * @param {UpdateMeta} meta
 * @param {"F32"|"F16"|"Q8"} [dtype] F16 needs canWriteF16() (safetensors.js)
 * @returns {Uint8Array}
 */
export function encodeUpdate(delta, meta, dtype = "F32") {
  if (!DELTA_DTYPES.includes(dtype)) throw new TypeError(`deltas are sent as ${DELTA_DTYPES.join(", ")}, not ${dtype}`);
  /** @type {Array<{name: string, shape: number[], data: import("./safetensors.js").TypedArray}>} */
  let tensors = delta;
  if (dtype === "F16") tensors = delta.map((t) => ({ ...t, data: toF16(t.data) }));
  if (dtype === "Q8") {
    tensors = delta.flatMap((t) => {
      const { values, scale } = quantise(t.data);
      return [{ ...t, data: values }, { name: t.name + SCALE_SUFFIX, shape: [scale.length], data: scale }];
    });
  }
  return encode(tensors, {
    ticket: meta.ticket, client_id: meta.clientId, base_version: String(meta.baseVersion),
    num_examples: String(meta.numExamples), loss_before: String(meta.lossBefore), loss_after: String(meta.lossAfter),
  });
}

/**
 * Q8 with stochastic rounding, as formats/update.py's quantise: per block of BLOCK values,
 * scale = max|x| / 127 and x / scale rounded down or up at random so that E[value * scale] = x;
 * a zero stays zero, an all-zero block gets scale 0, a block with NaN or an infinity a
 * non-finite scale (values 0) that the server refuses. Randomness: crypto.getRandomValues,
 * 32 bits per value.
 * @param {Float32Array} data
 * @returns {{values: Int8Array, scale: Float32Array}}
 */
export function quantise(data) {
  const values = new Int8Array(data.length);
  const scale = new Float32Array(Math.ceil(data.length / BLOCK));
  const random = new Uint32Array(Math.min(RANDOM_WORDS, data.length));
  let used = random.length;
  for (let block = 0, start = 0; start < data.length; block++, start += BLOCK) {
    const end = Math.min(start + BLOCK, data.length);
    let peak = 0;
    for (let i = start; i < end; i++) peak = Math.max(peak, Math.abs(data[i])); // NaN stays NaN
    scale[block] = peak / Q8_MAX;
    const step = scale[block]; // the float32 the server multiplies by
    if (!(step > 0 && step < Infinity)) continue;
    for (let i = start; i < end; i++) {
      if (used === random.length) {
        crypto.getRandomValues(random);
        used = 0;
      }
      const rounded = Math.floor(data[i] / step + random[used++] / 4294967296);
      values[i] = Math.max(-Q8_MAX, Math.min(Q8_MAX, rounded)); // float32 step may be half an ulp small
    }
  }
  return { values, scale };
}

/**
 * Parse and check an update body like formats/update.py's decode_update.
 * @param {Uint8Array|ArrayBuffer} body
 * @param {number} maxExamples the largest num_examples accepted
 * @returns {{tensors: Map<string, {dtype: string, shape: number[], data: import("./safetensors.js").TypedArray}>,
 *            meta: UpdateMeta}}
 * @throws {UpdateFormatError}
 */
export function decodeUpdate(body, maxExamples) {
  let decoded;
  try {
    decoded = decode(body);
  } catch (error) {
    if (!(error instanceof WeightsFormatError)) throw error;
    throw new UpdateFormatError("malformed_payload", `body is not a valid safetensors payload: ${error.message}`);
  }
  checkEncoding(decoded.tensors);
  return { tensors: decoded.tensors, meta: parseMetadata(decoded.metadata, maxExamples) };
}

/**
 * Refuse tensors that are not one delta encoding, in formats/update.py's check_encoding order.
 * @param {Map<string, {dtype: string, shape: number[], data: import("./safetensors.js").TypedArray}>} tensors
 * @throws {UpdateFormatError}
 */
function checkEncoding(tensors) {
  const names = [...tensors.keys()];
  const values = names.filter((name) => !name.endsWith(SCALE_SUFFIX));
  for (const name of values) {
    if (!VALUE_DTYPES.includes(tensors.get(name).dtype)) {
      throw new UpdateFormatError("bad_dtype", `tensor '${name}' is ${tensors.get(name).dtype}; deltas must be `
        + `${DELTA_DTYPES.join(", ")} (I8 with F32 scales)`);
    }
  }
  const kinds = [...new Set(values.map((name) => tensors.get(name).dtype))].sort();
  if (kinds.length > 1) {
    throw new UpdateFormatError("bad_dtype", `tensors of ${kinds.join(" and ")} in one body: `
      + "all deltas of an update share one encoding");
  }
  for (const name of names.filter((n) => n.endsWith(SCALE_SUFFIX))) {
    const base = name.slice(0, -SCALE_SUFFIX.length);
    if (!tensors.has(base)) throw new UpdateFormatError("unknown_parameter", `tensor '${name}' scales '${base}', which the body lacks`);
    if (tensors.get(base).dtype !== "I8") throw new UpdateFormatError("bad_scale", `tensor '${name}' scales '${base}', which is not I8`);
  }
  for (const name of values.filter((n) => tensors.get(n).dtype === "I8")) {
    const scale = tensors.get(name + SCALE_SUFFIX);
    if (!scale) throw new UpdateFormatError("missing_scale", `I8 tensor '${name}' has no '${name}${SCALE_SUFFIX}' tensor`);
    const blocks = Math.ceil(tensors.get(name).data.length / BLOCK);
    if (scale.dtype !== "F32" || scale.shape.length !== 1 || scale.shape[0] !== blocks) {
      throw new UpdateFormatError("bad_scale", `'${name}${SCALE_SUFFIX}' must be F32 of shape [${blocks}] `
        + `(one per ${BLOCK} values), not ${scale.dtype} [${scale.shape.slice(0, 8)}]`);
    }
    if (!scale.data.every(Number.isFinite)) {
      throw new UpdateFormatError("non_finite", `'${name}${SCALE_SUFFIX}' holds NaN or infinite values`);
    }
    if (scale.data.some((value) => value < 0)) {
      throw new UpdateFormatError("bad_scale", `'${name}${SCALE_SUFFIX}' holds negative scales`);
    }
  }
}

/**
 * @param {Object<string, string>} metadata
 * @param {number} maxExamples
 * @returns {UpdateMeta}
 */
function parseMetadata(metadata, maxExamples) {
  const missing = METADATA_FIELDS.filter((field) => !Object.hasOwn(metadata, field));
  if (missing.length) throw new UpdateFormatError("missing_metadata", `__metadata__ lacks ${missing.join(", ")}`);
  const unknown = Object.keys(metadata).filter((key) => !METADATA_FIELDS.includes(key)).sort();
  if (unknown.length) {
    throw new UpdateFormatError("bad_metadata", `unknown __metadata__ keys ${unknown.slice(0, 5)}; `
      + `allowed: ${METADATA_FIELDS.join(", ")}`);
  }
  if (!TICKET.test(metadata.ticket)) {
    throw new UpdateFormatError("bad_metadata", "ticket must be 1-128 characters of A-Z, a-z, 0-9, '_' or '-'");
  }
  if (!CLIENT_ID.test(metadata.client_id)) {
    throw new UpdateFormatError("bad_client_id", "client_id must be 8-64 characters of A-Z, a-z, 0-9, '_' or '-'");
  }
  return {
    ticket: metadata.ticket,
    clientId: metadata.client_id,
    baseVersion: integerField(metadata, "base_version", "bad_metadata", 0, MAX_VERSION),
    numExamples: integerField(metadata, "num_examples", "bad_num_examples", 1, maxExamples),
    lossBefore: lossField(metadata, "loss_before"),
    lossAfter: lossField(metadata, "loss_after"),
  };
}

/** A decimal integer field within [low, high]. */
function integerField(metadata, name, code, low, high) {
  const raw = metadata[name];
  const value = INTEGER.test(raw) ? Number(raw) : NaN;
  if (!(low <= value && value <= high)) {
    throw new UpdateFormatError(code, `${name} must be an integer from ${low} to ${high}, got '${raw.slice(0, 40)}'`);
  }
  return value;
}

/** A finite decimal loss from 0 to MAX_LOSS. */
function lossField(metadata, name) {
  const raw = metadata[name];
  const value = raw.length <= 40 && DECIMAL.test(raw) ? Number(raw) : NaN;
  if (!(Number.isFinite(value) && value >= 0 && value <= MAX_LOSS)) {
    throw new UpdateFormatError("bad_loss", `${name} must be a finite number from 0 to ${MAX_LOSS}, `
      + `got '${raw.slice(0, 40)}'`);
  }
  return value;
}
