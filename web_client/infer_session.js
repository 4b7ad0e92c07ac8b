/**
 * The completer's infer.onnx session, with one model version's weights baked into the graph.
 *
 * infer.onnx takes the parameters as graph inputs (model/graphs.py: the graph is downloaded once,
 * only weights change between rounds). Fed as inputs, onnxruntime-web copies all of them into wasm
 * memory on every call and packs each Gemm's weight matrix again; a keystroke makes a few calls, so
 * that was most of its time. Here the graph is rewritten once per version with the weights as
 * constant initializers (and no longer inputs), which onnxruntime packs once at session creation.
 *
 * The rewrite edits the protobuf at the byte level: ModelProto.graph (field 7) keeps every field
 * but the parameters' GraphProto.input entries (field 11), and gains one GraphProto.initializer
 * (field 5) per parameter: a TensorProto with dims (1), data_type FLOAT (2), name (8), raw_data (9).
 */

import { stateDims } from "./completer.js";

const WIRE_VARINT = 0, WIRE_I64 = 1, WIRE_LEN = 2, WIRE_I32 = 5;
const MODEL_GRAPH = 7, GRAPH_INITIALIZER = 5, GRAPH_INPUT = 11, VALUE_INFO_NAME = 1;
const TENSOR_DIMS = 1, TENSOR_DATA_TYPE = 2, TENSOR_NAME = 8, TENSOR_RAW_DATA = 9, ONNX_FLOAT = 1;
const utf8 = new TextEncoder();

/** Read a varint at `at`; returns [value, next offset]. Values above 2^53 are refused. */
function readVarint(bytes, at) {
  let value = 0, scale = 1;
  for (;;) {
    if (at >= bytes.length) throw new Error("infer.onnx: truncated varint");
    const byte = bytes[at++];
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) return [value, at];
    scale *= 128;
    if (scale > 2 ** 49) throw new Error("infer.onnx: varint too long");
  }
}

/** A non-negative integer (below 2^53) as varint bytes. */
function varint(value) {
  const out = [];
  while (value >= 0x80) {
    out.push((value % 128) | 0x80);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return Uint8Array.from(out);
}

/**
 * The top-level fields of a protobuf message, in order: {field, start, end, body} where start..end
 * spans the whole field (tag included) and body is a length-delimited field's payload (else null).
 */
function fields(bytes) {
  const out = [];
  for (let at = 0; at < bytes.length;) {
    const start = at;
    const [tag, afterTag] = readVarint(bytes, at);
    const field = Math.floor(tag / 8), wire = tag % 8;
    let body = null;
    if (wire === WIRE_VARINT) at = readVarint(bytes, afterTag)[1];
    else if (wire === WIRE_I64) at = afterTag + 8;
    else if (wire === WIRE_I32) at = afterTag + 4;
    else if (wire === WIRE_LEN) {
      const [length, afterLength] = readVarint(bytes, afterTag);
      at = afterLength + length;
      body = bytes.subarray(afterLength, at);
    } else throw new Error(`infer.onnx: unsupported protobuf wire type ${wire}`);
    if (at > bytes.length) throw new Error("infer.onnx: truncated field");
    out.push({ field, start, end: at, body });
  }
  return out;
}

/** One length-delimited field: tag, length, payload. */
function lengthDelimited(field, payload) {
  return [varint(field * 8 + WIRE_LEN), varint(payload.length), payload];
}

/**
 * A float32 TensorProto as initializer bytes. ONNX raw data is little-endian, as is wasm memory,
 * which onnxruntime-web fills from typed arrays as they are: the bytes are copied unchanged.
 */
function tensorProto(name, shape, values) {
  const raw = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const parts = shape.flatMap((d) => [varint(TENSOR_DIMS * 8 + WIRE_VARINT), varint(d)]);
  parts.push(varint(TENSOR_DATA_TYPE * 8 + WIRE_VARINT), varint(ONNX_FLOAT));
  parts.push(...lengthDelimited(TENSOR_NAME, utf8.encode(name)), ...lengthDelimited(TENSOR_RAW_DATA, raw));
  return concat(parts);
}

/** @param {Uint8Array[]} parts */
function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  parts.reduce((at, part) => (out.set(part, at), at + part.length), 0);
  return out;
}

/**
 * infer.onnx with `parameters` baked in: each becomes a constant initializer instead of an input.
 * @param {ArrayBuffer|Uint8Array} bytes infer.onnx
 * @param {Array<{name: string, shape: number[]}>} parameters the manifest's parameters
 * @param {Object<string, Float32Array>} values name -> values (manifest-checked by the caller)
 * @returns {Uint8Array}
 */
export function bakeWeights(bytes, parameters, values) {
  const graph = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const names = new Set(parameters.map((p) => p.name));
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const nameOf = (valueInfo) => {
    const entry = fields(valueInfo).find((f) => f.field === VALUE_INFO_NAME && f.body);
    return entry ? decoder.decode(entry.body) : null;
  };
  const model = fields(graph);
  const graphFields = model.filter((f) => f.field === MODEL_GRAPH && f.body);
  if (graphFields.length !== 1) throw new Error("infer.onnx: expected exactly one graph");
  const found = new Set();
  const kept = fields(graphFields[0].body).filter((f) => {
    if (f.field !== GRAPH_INPUT || !f.body) return true;
    const name = nameOf(f.body);
    if (!names.has(name)) return true;
    found.add(name);
    return false;
  });
  const missing = [...names].filter((name) => !found.has(name));
  if (missing.length) throw new Error(`infer.onnx has no input for parameter(s) ${missing.join(", ")}`);
  const body = graphFields[0].body;
  const newGraph = concat([
    ...kept.map((f) => body.subarray(f.start, f.end)),
    ...parameters.flatMap(({ name, shape }) =>
      lengthDelimited(GRAPH_INITIALIZER, tensorProto(name, shape, values[name]))),
  ]);
  return concat(model.map((f) => (f.field === MODEL_GRAPH && f.body
    ? concat(lengthDelimited(MODEL_GRAPH, newGraph)) : graph.subarray(f.start, f.end))));
}

/**
 * An infer session for one model version: step(tokens, state) as Completer wants it, and release()
 * to free the session's wasm memory once the version is retired (after the runs already queued).
 * @param {typeof import("/ort/ort.wasm.min.mjs")} ort onnxruntime-web
 * @param {ArrayBuffer|Uint8Array} graph infer.onnx
 * @param {object} manifest the version's manifest
 * @param {Object<string, Float32Array>} values its weights, name -> values
 */
export async function openInfer(ort, graph, manifest, values) {
  const session = await ort.InferenceSession.create(bakeWeights(graph, manifest.parameters, values),
    { executionProviders: ["wasm"] });
  const io = manifest.graphs.infer;
  /** @type {Promise<unknown>} the last run queued; the next starts after it, failed or not */
  let queue = Promise.resolve();
  /**
   * @param {number[]} tokens
   * @param {Float32Array} state
   * @returns {Promise<{logProbs: Float32Array, state: Float32Array}>}
   */
  const step = (tokens, state) => {
    const result = queue.catch(() => {}).then(async () => {
      const out = await session.run({
        [io.tokens_input]: new ort.Tensor("int64", BigInt64Array.from(tokens, BigInt), [tokens.length]),
        [io.state.input]: new ort.Tensor("float32", state, stateDims(io.state, tokens.length)),
      });
      return { logProbs: /** @type {Float32Array} */ (out[io.log_probs_output].data),
        state: /** @type {Float32Array} */ (out[io.state.output].data) };
    });
    queue = result;
    return result;
  };
  const release = () => queue.catch(() => {}).then(() => session.release());
  return { step, release };
}
