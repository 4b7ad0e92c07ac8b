/**
 * safetensors in the browser: the JS twin of formats/tensors.py, checked on the same bytes.
 *
 * 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets},
 * "__metadata__": {str: str}} padded with spaces to a multiple of 8, then the raw tensor bytes,
 * packed in the given order. The header is written as Python's json.dumps(separators=(",", ":"))
 * writes it (non-ASCII escaped), so both codecs produce identical bytes for identical input.
 */

/** dtype name -> typed-array class (F16 stays raw 16-bit words: Float16Array is not everywhere). */
export const DTYPES = { F32: Float32Array, F16: Uint16Array, I64: BigInt64Array, I32: Int32Array, I8: Int8Array };
const MAX_HEADER_BYTES = 1 << 20; // same bounds as formats/tensors.py
const MAX_DIMS = 32;
const F16_MAX = 65504; // the largest finite IEEE 754 half

/** Whether this browser can round to F16 (Float16Array, Chromium >= 135). */
export function canWriteF16() {
  return typeof globalThis.Float16Array === "function";
}

/**
 * F32 values as F16 words for encode(), rounded to nearest even by Float16Array. Values past
 * the half range are clipped to +-65504 first: rounding would make them infinite, which the
 * server refuses. Needs canWriteF16().
 * @param {Float32Array} values
 * @returns {Uint16Array}
 */
export function toF16(values) {
  const clipped = values.map((v) => Math.min(F16_MAX, Math.max(-F16_MAX, v)));
  return new Uint16Array(new Float16Array(clipped).buffer);
}

export class WeightsFormatError extends Error {}

function dtypeOf(array) {
  const name = Object.keys(DTYPES).find((key) => array instanceof DTYPES[key]);
  if (!name) throw new TypeError(`unsupported array type ${array?.constructor?.name}`);
  return name;
}

/** JSON.stringify with Python's ensure_ascii: every non-ASCII UTF-16 unit as \uXXXX. */
function asciiJson(value) {
  return JSON.stringify(value).replace(/[\u0080-\uffff]/g,
    (ch) => "\\u" + ch.charCodeAt(0).toString(16).padStart(4, "0"));
}

/** @typedef {Float32Array|Uint16Array|BigInt64Array|Int32Array|Int8Array} TypedArray one of DTYPES' arrays */

/**
 * Serialise tensors to safetensors bytes.
 * @param {Array<{name: string, shape: number[], data: TypedArray}>} tensors in file order
 * @param {Object<string, string>} [metadata]
 * @returns {Uint8Array}
 */
export function encode(tensors, metadata) {
  const header = {};
  if (metadata && Object.keys(metadata).length) {
    if (!Object.values(metadata).every((v) => typeof v === "string")) {
      throw new TypeError("safetensors metadata must map str to str");
    }
    header.__metadata__ = { ...metadata };
  }
  let offset = 0;
  for (const { name, shape, data } of tensors) {
    const count = shape.reduce((a, b) => a * b, 1);
    if (count !== data.length) throw new TypeError(`tensor ${name}: ${data.length} values for shape [${shape}]`);
    header[name] = { dtype: dtypeOf(data), shape: [...shape], data_offsets: [offset, offset + data.byteLength] };
    offset += data.byteLength;
  }
  let head = asciiJson(header);
  head += " ".repeat((8 - (head.length % 8)) % 8); // ASCII only, so characters == bytes
  const out = new Uint8Array(8 + head.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  for (let i = 0; i < head.length; i++) out[8 + i] = head.charCodeAt(i);
  let at = 8 + head.length;
  for (const { data } of tensors) {
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), at);
    at += data.byteLength;
  }
  return out;
}

/**
 * Parse safetensors bytes, checking every bound like formats/tensors.py's decode.
 * @param {ArrayBuffer|Uint8Array} payload
 * @returns {{tensors: Map<string, {dtype: string, shape: number[], data: TypedArray}>,
 *            metadata: Object<string, string>}}
 * @throws {WeightsFormatError}
 */
export function decode(payload) {
  const bytes = payload instanceof Uint8Array ? payload : new Uint8Array(payload);
  if (bytes.length < 8) throw new WeightsFormatError("payload shorter than the 8-byte safetensors header length");
  const headerLen = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (headerLen > BigInt(MAX_HEADER_BYTES) || 8n + headerLen > BigInt(bytes.length)) {
    throw new WeightsFormatError(`header length ${headerLen} does not fit the payload`);
  }
  const header = parseHeader(bytes.subarray(8, 8 + Number(headerLen)));
  const metadata = header.__metadata__ ?? {};
  delete header.__metadata__;
  if (typeof metadata !== "object" || Array.isArray(metadata)
      || !Object.values(metadata).every((v) => typeof v === "string")) {
    throw new WeightsFormatError("__metadata__ must map strings to strings");
  }
  const data = bytes.subarray(8 + Number(headerLen));
  const tensors = new Map();
  for (const [name, info] of Object.entries(header)) tensors.set(name, readTensor(name, info, data));
  checkPacked(Object.values(header).map((info) => info.data_offsets), data.length);
  return { tensors, metadata };
}

function parseHeader(raw) {
  let header;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
  } catch (error) {
    throw new WeightsFormatError(`header is not UTF-8 JSON: ${error.message}`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new WeightsFormatError("header must be a JSON object");
  }
  return header;
}

/** The tensors must tile the data section exactly: no overlaps, gaps or trailing bytes. */
function checkPacked(spans, dataLength) {
  let expected = 0;
  for (const [begin, end] of [...spans].sort((a, b) => a[0] - b[0] || a[1] - b[1])) {
    if (begin !== expected) throw new WeightsFormatError("tensor data overlaps or leaves gaps");
    expected = end;
  }
  if (expected !== dataLength) {
    throw new WeightsFormatError(`data section has ${dataLength - expected} trailing bytes`);
  }
}

function readTensor(name, info, data) {
  const keys = info && typeof info === "object" ? Object.keys(info).sort().join() : "";
  if (keys !== "data_offsets,dtype,shape") {
    throw new WeightsFormatError(`tensor '${name}': entry needs exactly dtype, shape, data_offsets`);
  }
  // typeof first: ["F32"] would pass Object.hasOwn as the key "F32"
  const Type = typeof info.dtype === "string" && Object.hasOwn(DTYPES, info.dtype) ? DTYPES[info.dtype] : undefined;
  if (!Type) throw new WeightsFormatError(`tensor '${name}': unsupported dtype '${String(info.dtype).slice(0, 20)}'`);
  const { shape, data_offsets: offsets } = info;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new WeightsFormatError(`tensor '${name}': shape must be a list of non-negative ints`);
  }
  // Safe integers only: past 2**53 JSON numbers are rounded, and products could round to a small size.
  if (shape.length > MAX_DIMS || !shape.every(Number.isSafeInteger)) {
    throw new WeightsFormatError(`tensor '${name}': over ${MAX_DIMS} dimensions or one past ${Number.MAX_SAFE_INTEGER}`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(Number.isSafeInteger)
      || !(0 <= offsets[0] && offsets[0] <= offsets[1] && offsets[1] <= data.length)) {
    throw new WeightsFormatError(`tensor '${name}': data_offsets out of range`);
  }
  const count = shape.reduce((a, b) => a * b, 1);
  if (offsets[1] - offsets[0] !== count * Type.BYTES_PER_ELEMENT) {
    throw new WeightsFormatError(`tensor '${name}': ${offsets[1] - offsets[0]} bytes for shape [${shape}]`);
  }
  // A copy, so the typed array is aligned whatever the offset.
  const copy = data.slice(offsets[0], offsets[1]);
  return { dtype: info.dtype, shape, data: new Type(copy.buffer) };
}
