/**
 * The update body POSTed to /api/updates (docs/PROTOCOL.md): the JS twin of formats/update.py.
 *
 * Safetensors bytes (safetensors.js) with one F32 or F16 delta per parameter and exactly six
 * string metadata fields. encodeUpdate writes what it is given; decodeUpdate refuses what the
 * server refuses, with the same error codes (tests/web/test_update.py checks both directions).
 */

import { WeightsFormatError, decode, encode, toF16 } from "./safetensors.js";

/** The metadata keys, in the order both codecs write them. */
export const METADATA_FIELDS = Object.freeze(["ticket", "client_id", "base_version", "num_examples", "loss_before",
  "loss_after"]);
const DELTA_DTYPES = ["F32", "F16"];
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
 * @param {"F32"|"F16"} [dtype] F16 needs canWriteF16() (safetensors.js)
 * @returns {Uint8Array}
 */
export function encodeUpdate(delta, meta, dtype = "F32") {
  if (!DELTA_DTYPES.includes(dtype)) throw new TypeError(`deltas are sent as F32 or F16, not ${dtype}`);
  const tensors = dtype === "F16" ? delta.map((t) => ({ ...t, data: toF16(t.data) })) : delta;
  return encode(tensors, {
    ticket: meta.ticket, client_id: meta.clientId, base_version: String(meta.baseVersion),
    num_examples: String(meta.numExamples), loss_before: String(meta.lossBefore), loss_after: String(meta.lossAfter),
  });
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
  for (const [name, tensor] of decoded.tensors) {
    if (!DELTA_DTYPES.includes(tensor.dtype)) {
      throw new UpdateFormatError("bad_dtype", `tensor '${name}' is ${tensor.dtype}; deltas must be F32 or F16`);
    }
  }
  return { tensors: decoded.tensors, meta: parseMetadata(decoded.metadata, maxExamples) };
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
