/**
 * Every message between the page and a worker (worker.js). Both directions carry `type`;
 * each request carries a fresh `id` and every reply to it echoes that `id`. A failed request
 * gets one `error` reply instead of its normal one.
 *
 * Page -> worker
 * @typedef {{type: "load", id: number, model: ModelInfo}} LoadRequest
 *   Make `model` the worker's model (download what is not cached, verify, warm up). Reply: ready.
 * @typedef {{type: "complete", id: number, typed: string, k: number}} CompleteRequest
 *   Up to k completions of the typed text with the loaded model: the network's fused with the
 *   bundle's counts.bin and the words already typed where it ships one (ngram.js FusedCompleter).
 *   Reply: suggestions.
 * @typedef {{type: "train", id: number, model: ModelInfo, urls: string[], epochs: number, lr: number}} TrainRequest
 *   Local SGD epochs over canonical URLs from `model`'s weights. Replies: progress*, then trained.
 * @typedef {{type: "trainStep", id: number, model: ModelInfo, tokens: Int32Array, targets: Int32Array,
 *            mask: Float32Array, lr: number}} TrainStepRequest
 *   One raw train_step.onnx run from `model`'s weights (parity checks, benchmarks). Reply: stepped.
 * @typedef {{type: "secure", id: number, op: "advertise"|"shareKeys"|"maskedInput"|"unmask", bytes: Uint8Array,
 *            index?: number, delta?: Float32Array}} SecureRequest
 *   One step of this page's side of a secure round (secagg.js): `advertise` takes the CONFIG and
 *   the member's index and starts the round; the others take the server's message of the phase
 *   (ROSTER, SHARES_FOR, UNMASK_REQUEST), `maskedInput` also the flattened delta. Reply: secured.
 *
 * Worker -> page
 * @typedef {{type: "ready", id: number, version: number, downloadedBytes: number}} ReadyReply
 *   The model is loaded and warmed up; downloadedBytes were fetched (the rest came from the cache).
 * @typedef {{type: "suggestions", id: number, version: number, typed: string, suggestions: string[],
 *            scores: number[]}} SuggestionsReply
 *   The model's suggestions, best first, and the log of each one's score (the network's
 *   log-probability, or with counts the fusion's log share), from model `version`.
 * @typedef {{type: "progress", id: number, stage: string, done: number, total: number, loss: number}} ProgressReply
 *   One train_step run finished; `loss` is that batch's loss before its update.
 * @typedef {{type: "trained", id: number, baseVersion: number, delta: Tensor[], lossBefore: number,
 *            lossAfter: number, numExamples: number, steps: number, tokens: number, seconds: number}} TrainedReply
 *   Training finished; delta = trained - global weights, in manifest parameter order.
 * @typedef {{type: "stepped", id: number, loss: number, weights: Tensor[], seconds: number, threads: number,
 *            isolated: boolean}} SteppedReply
 * @typedef {{type: "secured", id: number, bytes: Uint8Array}} SecuredReply
 *   The message to send for the step (ADVERTISE, SHARES, MASKED_INPUT, UNMASK).
 * @typedef {{type: "error", id: number, message: string}} ErrorReply
 *
 * @typedef {{version: number, round: number, manifest: object, files: Object<string, string>,
 *            training?: {open: boolean, code?: string, message?: string},
 *            aggregation?: "plain"|"secure"}} ModelInfo
 *   GET /api/model's body: the bundle manifest, a URL per file, whether training is open, and how
 *   the server aggregates.
 * @typedef {{name: string, shape: number[], data: Float32Array}} Tensor
 */

/** The reply type that settles each request type. */
export const FINAL_REPLY = Object.freeze({ load: "ready", complete: "suggestions", train: "trained",
  trainStep: "stepped", secure: "secured" });

/** Page side: send requests to a worker and get promises of their final replies. */
export class WorkerClient {
  /** @param {Worker} worker */
  constructor(worker) {
    this.worker = worker;
    this.nextId = 1;
    this.pending = new Map(); // id -> {type, resolve, reject, onProgress}
    this.answered = false; // whether the worker ever replied, so its module loaded
    /** Why the worker can never answer (its module failed to load or threw), once that is known. */
    this.failure = null;
    worker.addEventListener("message", (event) => this.receive(event.data));
    worker.addEventListener("error", (event) => {
      // A module that fails to load fires a plain Event, with no message.
      const reason = `worker failed: ${event.message ?? "its script did not load"}`;
      if (!this.answered) this.failure = reason; // an error after a reply fails only what was pending
      this.failAll(reason);
    });
  }

  /**
   * @param {string} type one of FINAL_REPLY's keys
   * @param {object} fields the request's other fields
   * @param {{onProgress?: (reply: ProgressReply) => void, transfer?: Transferable[]}} [options]
   */
  request(type, fields, { onProgress, transfer = [] } = {}) {
    if (!FINAL_REPLY[type]) throw new Error(`unknown request type ${type}`);
    if (this.failure) return Promise.reject(new Error(this.failure));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { type, resolve, reject, onProgress });
      this.worker.postMessage({ ...fields, type, id }, transfer);
    });
  }

  receive(message) {
    this.answered = true;
    const entry = this.pending.get(message.id);
    if (!entry) return;
    if (message.type === "progress") {
      entry.onProgress?.(message);
      return;
    }
    this.pending.delete(message.id);
    if (message.type === "error") entry.reject(new Error(message.message));
    else if (message.type === FINAL_REPLY[entry.type]) entry.resolve(message);
    else entry.reject(new Error(`worker answered ${entry.type} with ${message.type}`));
  }

  failAll(reason) {
    for (const entry of this.pending.values()) entry.reject(new Error(reason));
    this.pending.clear();
  }
}

/** Worker side: post a reply echoing the request's id. */
export function reply(request, type, fields = {}, transfer = []) {
  self.postMessage({ ...fields, type, id: request.id }, transfer);
}
