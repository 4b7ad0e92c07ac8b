/**
 * Local training over the device's history: runtime/trainer.py's rows, batches and loop in JS.
 *
 * No onnxruntime here: the worker passes in `step(weights, batch, lr) -> {loss, weights}`, one
 * train_step.onnx call. Loss before/after are full lr-0 passes over the same rows (the step
 * returns the loss *before* its update), token-weighted, exactly as LocalTrainer.mean_loss.
 */

/**
 * @typedef {Object<string, Float32Array>} Weights parameter name -> values
 * @typedef {{count: number, seqLen: number, tokens: Int32Array, targets: Int32Array, mask: Float32Array}} Rows
 * @typedef {{tokens: Int32Array, targets: Int32Array, mask: Float32Array}} Batch
 * @typedef {(weights: Weights, batch: Batch, lr: number) => Promise<{loss: number, weights: Weights}>} StepFn
 */

/**
 * Teacher-forcing rows: tokens = [bos, p1..pn], targets = [p1..pn, eos], truncated to seqLen,
 * padded with pad_id and mask 0 (docs/FORMAT.md, train_step.onnx).
 * @returns {Rows}
 */
export function encodeRows(tokenizer, urls, seqLen, config) {
  const count = urls.length;
  const tokens = new Int32Array(count * seqLen).fill(config.pad_id);
  const targets = new Int32Array(count * seqLen).fill(config.pad_id);
  const mask = new Float32Array(count * seqLen);
  urls.forEach((url, row) => {
    const pieces = tokenizer.encode(url);
    const inputs = [config.bos_id, ...pieces].slice(0, seqLen);
    const outputs = [...pieces, config.eos_id].slice(0, seqLen);
    tokens.set(inputs, row * seqLen);
    targets.set(outputs, row * seqLen);
    mask.fill(1, row * seqLen, row * seqLen + outputs.length);
  });
  return { count, seqLen, tokens, targets, mask };
}

/** Batches of exactly batchSize rows in `order`; the last is padded with all-zero rows (mask 0). */
export function* batches(rows, batchSize, order = [...Array(rows.count).keys()]) {
  const T = rows.seqLen;
  for (let start = 0; start < order.length; start += batchSize) {
    const batch = { tokens: new Int32Array(batchSize * T), targets: new Int32Array(batchSize * T),
      mask: new Float32Array(batchSize * T) };
    order.slice(start, start + batchSize).forEach((row, i) => {
      for (const key of ["tokens", "targets", "mask"]) batch[key].set(rows[key].subarray(row * T, (row + 1) * T), i * T);
    });
    yield batch;
  }
}

/** A uniformly random permutation of 0..n-1 (Fisher-Yates). */
export function permutation(n) {
  const order = [...Array(n).keys()];
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

function maskSum(mask) {
  return mask.reduce((a, b) => a + b, 0);
}

/**
 * Token-weighted mean loss over rows with lr 0 (the weights do not move).
 * @param {StepFn} step
 * @param {Weights} weights
 * @param {Rows} rows
 * @param {number} batchSize
 * @param {(loss: number) => void} [onBatch] called after each batch with its loss
 * @returns {Promise<number>}
 */
export async function meanLoss(step, weights, rows, batchSize, onBatch = () => {}) {
  let total = 0, count = 0;
  for (const batch of batches(rows, batchSize)) {
    const { loss } = await step(weights, batch, 0);
    total += loss * maskSum(batch.mask);
    count += maskSum(batch.mask);
    onBatch(loss);
  }
  return total / Math.max(count, 1);
}

/**
 * Shuffled SGD epochs over rows (FedAvg's client update, McMahan et al. 2017).
 * @param {object} job
 * @param {StepFn} job.step one train_step.onnx call
 * @param {Weights} job.weights the global weights to start from
 * @param {Rows} job.rows from encodeRows
 * @param {number} job.batchSize the training graph's fixed batch
 * @param {number} job.epochs passes over the rows
 * @param {number} job.lr SGD learning rate
 * @param {(p: {stage: string, done: number, total: number, loss: number}) => void} job.onProgress
 * @returns {Promise<{weights: Weights, lossBefore: number, lossAfter: number,
 *   numExamples: number, steps: number, tokens: number, seconds: number}>}
 */
export async function trainLocal({ step, weights, rows, batchSize, epochs, lr, onProgress }) {
  const perPass = Math.ceil(rows.count / batchSize);
  const total = perPass * (epochs + 2);
  let done = 0;
  const tick = (stage) => (loss) => onProgress({ stage, done: ++done, total, loss });
  const lossBefore = await meanLoss(step, weights, rows, batchSize, tick("evaluating"));
  const started = performance.now();
  let tokens = 0, steps = 0;
  for (let epoch = 0; epoch < epochs; epoch++) {
    for (const batch of batches(rows, batchSize, permutation(rows.count))) {
      const result = await step(weights, batch, lr);
      weights = result.weights;
      tokens += maskSum(batch.mask);
      steps += 1;
      tick(`epoch ${epoch + 1}/${epochs}`)(result.loss);
    }
  }
  const seconds = (performance.now() - started) / 1000;
  const lossAfter = await meanLoss(step, weights, rows, batchSize, tick("evaluating"));
  return { weights, lossBefore, lossAfter, numExamples: rows.count, steps, tokens, seconds };
}

/** new - global for every parameter, in float32 (the update the server aggregates). */
export function weightDelta(updated, global) {
  const delta = {};
  for (const [name, values] of Object.entries(global)) {
    const out = new Float32Array(values.length);
    for (let i = 0; i < values.length; i++) out[i] = updated[name][i] - values[i];
    delta[name] = out;
  }
  return delta;
}
