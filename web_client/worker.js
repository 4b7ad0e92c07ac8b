/**
 * The only owner of onnxruntime-web. The page runs two of these module workers: one answers
 * `complete` on every keystroke with the model's suggestions (the network's fused with the bundle's
 * counts and the words already typed), the other trains, so training never blocks typing.
 * Messages are listed in protocol.js; graph input/output names come from the manifest only.
 */

import * as ort from "/ort/ort.wasm.min.mjs";
import { Completer, minProbability } from "./completer.js";
import { COUNTS_FILE, MAX_WASM_THREADS, ORT_WASM_FILE, ORT_WASM_PATH, ORT_WASM_THREADS } from "./constants.js";
import { openInfer } from "./infer_session.js";
import { fetchRuntime, fetchVerified } from "./model_store.js";
import { CountTrie, FusedCompleter } from "./ngram.js";
import { reply } from "./protocol.js";
import { decode } from "./safetensors.js";
import { SecAggClient } from "./secagg.js";
import { Tokenizer } from "./tokenizer.js";
import { encodeRows, trainLocal, weightDelta } from "./trainer.js";

ort.env.wasm.wasmPaths = ORT_WASM_PATH;
// ?threads=N on this worker's URL overrides ORT_WASM_THREADS: the training worker's train_threads
// (client.js), and bench/bench_browser.py's comparison of 1 and 2.
const requestedThreads = Number(new URL(self.location.href).searchParams.get("threads"));
ort.env.wasm.numThreads = Number.isInteger(requestedThreads) && requestedThreads >= 1 && requestedThreads <= MAX_WASM_THREADS
  ? requestedThreads : ORT_WASM_THREADS;

const memo = new Map(); // key -> promise, so concurrent callers share one load

function once(key, load) {
  if (!memo.has(key)) {
    const promise = load();
    promise.catch(() => memo.get(key) === promise && memo.delete(key)); // a failed load may be retried
    memo.set(key, promise);
  }
  return memo.get(key);
}

/** Forget every memoized thing that is not part of `model`, so old rounds do not pile up. */
function keepOnly(model) {
  const current = new Set(["wasm", String(model.version), ...Object.values(model.manifest.files).map((f) => f.sha256)]);
  for (const key of memo.keys()) {
    if (!current.has(key.slice(key.indexOf(":") + 1))) memo.delete(key);
  }
}

/**
 * A bundle file's bytes; counts what had to be downloaded. `ready` reports what was not reported
 * yet, so that the files of a load that failed (counts.bin refused after the graph came in) count
 * once the next load succeeds, and loads that overlap count nothing twice.
 */
let downloadedBytes = 0, reportedBytes = 0;
async function file(model, name) {
  const { bytes, downloaded } = await fetchVerified(model, name);
  downloadedBytes += downloaded;
  return bytes;
}

/** ORT's wasm binary, handed to ORT so it comes from Cache Storage rather than a second download. */
function runtime() {
  return once("runtime:wasm", async () => {
    const { bytes, downloaded } = await fetchRuntime(`${ORT_WASM_PATH}${ORT_WASM_FILE}?v=${ort.env.versions.web}`);
    downloadedBytes += downloaded;
    ort.env.wasm.wasmBinary = bytes;
  });
}

/** One ORT session per graph file (keyed by sha256: rounds share graphs), runs serialised. */
function session(model, graph) {
  const { file: name } = model.manifest.graphs[graph];
  return once(`session:${model.manifest.files[name].sha256}`, async () => {
    await runtime();
    const created = await ort.InferenceSession.create(await file(model, name), { executionProviders: ["wasm"] });
    /** @type {Promise<unknown>} the last run queued; the next starts after it, failed or not */
    let queue = Promise.resolve();
    /**
     * @param {ort.InferenceSession.FeedsType} feeds
     * @returns {Promise<ort.InferenceSession.ReturnType>}
     */
    const run = (feeds) => {
      const result = queue.catch(() => {}).then(() => created.run(feeds));
      queue = result;
      return result;
    };
    return { run };
  });
}

function tokenizer(model) {
  const name = model.manifest.tokenizer.vocab;
  return once(`tokenizer:${model.manifest.files[name].sha256}`, async () =>
    new Tokenizer(JSON.parse(new TextDecoder().decode(await file(model, name)))));
}

/** The global weights of a model version: name -> Float32Array, checked against the manifest. */
function weights(model) {
  return once(`weights:${model.manifest.files["weights.safetensors"].sha256}`, async () => {
    const { tensors } = decode(await file(model, "weights.safetensors"));
    const out = {};
    for (const { name, shape } of model.manifest.parameters) {
      const tensor = tensors.get(name);
      if (!tensor || tensor.dtype !== "F32" || tensor.shape.join() !== shape.join()) {
        throw new Error(`weights.safetensors does not match the manifest at ${name}`);
      }
      out[name] = tensor.data;
    }
    return out;
  });
}

function feedWeights(model, values) {
  return Object.fromEntries(model.manifest.parameters.map(({ name, shape }) =>
    [name, new ort.Tensor("float32", values[name], shape)]));
}

/**
 * A warmed-up completer over a model version's infer.onnx (its weights baked in), fused with its
 * counts.bin where the bundle ships one (FusedCompleter), and release().
 */
function completer(model) {
  return once(`completer:${model.version}`, async () => {
    const io = model.manifest.graphs.infer, ids = model.manifest.tokenizer;
    const [graph, tok, values, trie] = await Promise.all([file(model, io.file), tokenizer(model), weights(model),
      counts(model), runtime()]);
    const infer = await openInfer(ort, graph, model.manifest, values);
    const network = new Completer({ tokenizer: tok, step: infer.step, config: model.manifest.config, state: io.state,
      blockedIds: [ids.pad_id, ids.unk_id, ids.bos_id], threshold: minProbability(model.manifest) });
    const result = trie ? new FusedCompleter(network, trie) : network;
    try {
      await result.completeScored("", 1); // warm-up: first runs allocate and JIT
    } catch (error) {
      await infer.release(); // the session would otherwise hold its wasm memory for nothing
      throw error;
    }
    return { completer: result, release: infer.release };
  });
}

/** The bundle's count component (counts.bin), or null where it ships none; versions that link the same file share one. */
function counts(model) {
  const entry = model.manifest.files[COUNTS_FILE];
  if (!entry) return Promise.resolve(null);
  return once(`counts:${entry.sha256}`, async () => new CountTrie(await file(model, COUNTS_FILE)));
}

/** step(weights, batch, lr) -> {loss, weights} with a model's train_step.onnx. */
async function trainStepper(model) {
  const graphSession = await session(model, "train_step");
  const io = model.manifest.graphs.train_step;
  const dims = [io.batch_size, io.seq_len];
  const int64 = (values) => new ort.Tensor("int64", BigInt64Array.from(values, BigInt), dims);
  return async (values, batch, lr) => {
    const out = await graphSession.run({
      ...feedWeights(model, values),
      [io.data_inputs.tokens]: int64(batch.tokens),
      [io.data_inputs.targets]: int64(batch.targets),
      [io.data_inputs.mask]: new ort.Tensor("float32", batch.mask, dims),
      [io.data_inputs.lr]: new ort.Tensor("float32", Float32Array.of(lr), []),
    });
    /** @type {Object<string, Float32Array>} */
    const updated = {};
    for (const [name, output] of Object.entries(io.parameter_outputs)) {
      updated[name] = /** @type {Float32Array} */ (out[output].data); // float32 outputs (manifest)
    }
    return { loss: Number(out[io.loss_output].data[0]), weights: updated };
  };
}

/** Manifest-ordered tensors to post, and their buffers to transfer. */
function tensorList(model, values) {
  const list = model.manifest.parameters.map(({ name, shape }) => ({ name, shape, data: values[name] }));
  return [list, list.map((t) => t.data.buffer)];
}

/**
 * The newest model that finished loading: completions use it. `busy` counts those in flight; a
 * retired one frees its session once none is.
 * @type {{version: number, completer: Completer|FusedCompleter, release: () => Promise<void>, busy: number,
 *   retired: boolean}|null}
 */
let active = null;

function retire(entry) {
  entry.retired = true;
  if (!entry.busy) entry.release();
}

async function load(request) {
  const ready = { version: request.model.version, ...(await completer(request.model)), busy: 0, retired: false };
  if (!active || ready.version > active.version) {
    if (active) retire(active);
    active = ready;
    keepOnly(request.model);
  } else if (ready.version < active.version) {
    memo.delete(`completer:${ready.version}`); // an older version finished loading late
    retire(ready);
  }
  reply(request, "ready", { version: request.model.version, downloadedBytes: downloadedBytes - reportedBytes });
  reportedBytes = downloadedBytes;
}

/** Run `work` on the active model's completer, holding it so that a retired one is not freed under it. */
async function withActive(work) {
  if (!active) throw new Error("no model is loaded yet");
  const entry = active;
  entry.busy += 1;
  try {
    return await work(entry);
  } finally {
    entry.busy -= 1;
    if (entry.retired && !entry.busy) entry.release();
  }
}

/** The model's suggestions: the network's fused with the bundle's counts and the words already typed (FusedCompleter). */
async function complete(request) {
  await withActive(async ({ completer, version }) => {
    const scored = await completer.completeScored(request.typed, request.k);
    reply(request, "suggestions", { version, typed: request.typed, suggestions: scored.map(([text]) => text),
      scores: scored.map(([, score]) => score) });
  });
}

async function train(request) {
  const { model } = request;
  keepOnly(model);
  const [step, tok, global] = await Promise.all([trainStepper(model), tokenizer(model), weights(model)]);
  const io = model.manifest.graphs.train_step;
  const rows = encodeRows(tok, request.urls, io.seq_len, model.manifest.config);
  const result = await trainLocal({
    step, weights: global, rows, batchSize: io.batch_size, epochs: request.epochs, lr: request.lr,
    onProgress: (progress) => reply(request, "progress", progress),
  });
  const [delta, buffers] = tensorList(model, weightDelta(result.weights, global));
  const { lossBefore, lossAfter, numExamples, steps, tokens, seconds } = result; // TrainedReply's fields
  reply(request, "trained", { lossBefore, lossAfter, numExamples, steps, tokens, seconds, baseVersion: model.version,
    delta }, buffers);
}

async function trainStep(request) {
  const [step, global] = await Promise.all([trainStepper(request.model), weights(request.model)]);
  const started = performance.now();
  const { loss, weights: updated } = await step(global, request, request.lr);
  const seconds = (performance.now() - started) / 1000;
  const [list, buffers] = tensorList(request.model, updated);
  // numThreads as onnxruntime left it: it falls back to 1 where SharedArrayBuffer is missing
  reply(request, "stepped", { loss, weights: list, seconds, threads: ort.env.wasm.numThreads,
    isolated: self.crossOriginIsolated }, buffers);
}

let secureClient = null; // this page's side of its open secure round (secagg.js); keys never leave the worker

async function secure(request) {
  const { op, bytes } = request;
  let message;
  if (op === "advertise") {
    secureClient = await SecAggClient.create(bytes, request.index);
    message = secureClient.advertise();
  } else if (!secureClient) {
    throw new Error("no secure round has begun in this worker");
  } else if (op === "shareKeys") {
    message = await secureClient.shareKeys(bytes);
  } else if (op === "maskedInput") {
    message = await secureClient.maskedInput(bytes, request.delta);
  } else if (op === "unmask") {
    message = secureClient.unmask(bytes);
    secureClient = null;
  } else {
    throw new Error(`unknown secure step ${op}`);
  }
  reply(request, "secured", { bytes: message });
}

const HANDLERS = { load, complete, train, trainStep, secure };

self.addEventListener("message", async ({ data: request }) => {
  try {
    const handler = Object.hasOwn(HANDLERS, request.type) ? HANDLERS[request.type] : null;
    if (!handler) throw new Error(`unknown message type ${request.type}`);
    await handler(request);
  } catch (error) {
    reply(request, "error", { message: error?.message ?? String(error) });
  }
});
