/**
 * Every tunable of the browser client, with its unit in its name.
 *
 * The completer's search constants must equal runtime/complete.py's (BEAM_WIDTH, MAX_STEPS):
 * tests/web compare the page's suggestions with the Python completer's.
 */

/** Beams kept per decoding step (runtime/complete.py BEAM_WIDTH). */
export const BEAM_WIDTH = 8;

/** Decoding steps before the search gives up (runtime/complete.py MAX_STEPS). */
export const MAX_STEPS = 16;

/** Piece sequences (BOS + pieces -> log-probs, state) kept between keystrokes (runtime/complete.py CONTEXT_CACHE_SIZE). */
export const CONTEXT_CACHE_ENTRIES = 512;

/**
 * Completer.logProbs stops teacher-forcing a text once the network gives its pieces less than this
 * past the healed context, and scores it -Infinity (runtime/complete.py FORCED_FLOOR): a measured
 * cut, not an exact one.
 */
export const FORCED_FLOOR = 1e-6;

/**
 * Characters a suggestion must add to what was typed past the host (runtime/complete.py
 * MIN_ADDED_CHARS): accepting one takes a key, so one a single character longer saves none and only
 * takes another's slot. In the host the top guess completes inline, and Enter saves that key.
 */
export const MIN_ADDED_CHARS = 2;

/** The personal n-gram's order: symbols of context + 1 (runtime/ngram.py ORDER). */
export const NGRAM_ORDER = 8;

/** Stupid-backoff factor per context shortened (runtime/ngram.py ALPHA). */
export const NGRAM_ALPHA = 0.4;

/** Beams the personal n-gram keeps per character (runtime/ngram.py BEAM_WIDTH). */
export const NGRAM_BEAM_WIDTH = 6;

/** Characters the personal n-gram generates at most (runtime/ngram.py MAX_CHARS). */
export const NGRAM_MAX_CHARS = 48;

/** The model's share w in the mix with the personal n-gram (runtime/ngram.py PERSONAL_WEIGHT). */
export const PERSONAL_WEIGHT = 0.15;

/**
 * Histories whose next-symbol candidates an n-gram remembers before it starts a new cache, keeping
 * the full one as the one before (ngram.js remember; runtime/ngram.py RANKED_CACHE_SIZE, larger,
 * is cleared whole instead: the answers are the same): about 1 KB each (0.97 KB measured in node),
 * at most twice this many, and the worker's count component lives as long as its bundle.
 */
export const NGRAM_RANKED_CACHE_ENTRIES = 10000;

/** A bundle's count component, where it ships one (runtime/ngram.py COUNTS_FILE). */
export const COUNTS_FILE = "counts.bin";

/** Suggestions the network and the count component each offer the fusion (runtime/ngram.py FUSION_K). */
export const FUSION_K = 6;

/** The network's share w in the fusion with the count component (runtime/ngram.py FUSION_WEIGHT). */
export const FUSION_WEIGHT = 0.5;

/** fuseSuggestions: a count score S below this (0: a symbol never counted) counts as this (runtime/ngram.py COUNT_FLOOR). */
export const COUNT_FLOOR = 1e-300;

/** A bundle's count component: interpolated absolute discounting's D (runtime/ngram.py COUNT_DISCOUNT). */
export const COUNT_DISCOUNT = 2;

/** withRepeats: the words already typed in the URL get this share of the list (runtime/ngram.py REPEAT_WEIGHT). */
export const REPEAT_WEIGHT = 0.5;

/** repeatedWords: at most this many, the share split evenly (runtime/ngram.py REPEAT_K). */
export const REPEAT_K = 2;

/** repeatedWords: characters of the word that must be typed first (runtime/ngram.py REPEAT_TYPED). */
export const REPEAT_TYPED = 2;

/** Suggestions shown under the URL bar. */
export const SUGGESTIONS_K = 5;

/** Of those, at most this many come from the local history (shown first); the model fills the rest. */
export const HISTORY_SUGGESTIONS = 2;

/**
 * Encoding of the uploaded delta: "Q8" (int8 with a float32 scale per 64 values, stochastic
 * rounding: unbiased) is a quarter of "F32" and works in every browser; "F16" halves the upload
 * where the browser has Float16Array (Chromium >= 135; elsewhere the page sends "F32"); "F32"
 * always sends full precision.
 * @type {"F32"|"F16"|"Q8"}
 */
export const UPLOAD_DTYPE = "Q8";

/** Where the page fetches onnxruntime-web's wasm files: served locally, never from a CDN. */
export const ORT_WASM_PATH = "/ort/";

/** The wasm build that ort.wasm.min.mjs runs (fetched once, then from Cache Storage). */
export const ORT_WASM_FILE = "ort-wasm-simd-threaded.wasm";

/** onnxruntime-web threads of a worker unless its URL asks for another count (the training worker's ?threads=). */
export const ORT_WASM_THREADS = 1;

/** The most onnxruntime-web threads a worker takes, whatever its URL asks. */
export const MAX_WASM_THREADS = 16;

/** Cache Storage bucket for bundle files, keyed by their immutable /api/files/<sha256> URL. */
export const MODEL_CACHE_NAME = "fedurl-model-files-v1";

/** Cache Storage bucket for onnxruntime-web's wasm, keyed by its URL and ORT version. */
export const RUNTIME_CACHE_NAME = "fedurl-runtime-v1";

/** IndexedDB database holding the local history, the unsent update and counters. */
export const HISTORY_DB_NAME = "fedurl";

/** The service worker (sw.js, served at the root so its scope covers the page). */
export const SERVICE_WORKER_URL = "/sw.js";

/** How long "Clear all" offers its Undo button. */
export const UNDO_CLEAR_MS = 15000;

/** First wait before an unsent update is offered to the server again; doubles after each failure. */
export const RETRY_FIRST_MS = 5000;

/** Longest wait between automatic upload attempts. */
export const RETRY_MAX_MS = 300000;

/** How often the page re-checks whether it may train on its own (and updates what it says). */
export const TRAIN_CHECK_MS = 1000;

/** Page settings that URL parameters may override (?train_after_urls=3&poll_ms=500). */
export const DEFAULTS = Object.freeze({
  /** New visited URLs after which the page trains on its own (0: only "Train now" trains). */
  train_after_urls: 20,
  /** Milliseconds without typing or clicking before the page trains on its own. */
  train_idle_ms: 20000,
  /**
   * onnxruntime-web threads of the training worker (whole, at most the device's cores; 0 means
   * ORT_WASM_THREADS). A run trains while nobody types (auto_train.js), so it may take two cores
   * where the completion worker keeps ORT_WASM_THREADS: a step of the shipped model 1.7-2.0 x
   * faster on a 2-core VM (docs/BENCHMARKS.md).
   */
  train_threads: 2,
  /** Local SGD epochs over the history per training run. */
  epochs: 2,
  /**
   * Most recent visits trained on per run. Bounds a run's compute, and its delta: with lr 0.5 and
   * the graph's gradient clip of 1, 512 URLs x 2 epochs is 64 steps, an L2 norm of at most 32,
   * under the server's default MAX_UPDATE_NORM of 50.
   */
  max_train_urls: 512,
  /** SGD learning rate of train_step.onnx (runtime/trainer.py's default). */
  lr: 0.5,
  /** Milliseconds between checks for a new global model version. */
  poll_ms: 15000,
});

/**
 * DEFAULTS laid over by URL parameters; unknown keys and non-numbers are errors, not ignored.
 * @param {string} search location.search
 */
export function getConfig(search) {
  const config = { ...DEFAULTS };
  for (const [key, raw] of new URLSearchParams(search)) {
    if (!Object.hasOwn(DEFAULTS, key)) throw new Error(`unknown setting ?${key}= (known: ${Object.keys(DEFAULTS)})`);
    const value = Number(raw);
    if (!Number.isFinite(value) || value < 0) throw new Error(`setting ?${key}= must be a non-negative number`);
    config[key] = value;
  }
  return Object.freeze(config);
}
