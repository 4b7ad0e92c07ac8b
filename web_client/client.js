/**
 * The page's controller, without DOM: keeps the model current, asks the completion worker for
 * the model's suggestions (the network's fused with the bundle's counts and the words already
 * typed), records visits locally, trains in the second worker and uploads the update.
 * Training waits for the server to draw this browser into a round's cohort: the client id is
 * enrolled once (a proof-of-work puzzle, pow.js), then checked in until selected. When the
 * server aggregates securely (its check-in answer names a secure phase), the training worker runs
 * this browser's side of the round (secagg.js) and only a masked update leaves the page.
 *
 * main.js listens for three events: "change" (detail: the state snapshot below), "suggestions"
 * ({typed, suggestions: [{text, source: "history"|"model"}]}) and "history" (the visit list changed).
 */

import {
  ServerError, checkIn, enroll, fetchModel, fetchPuzzle, requestTicket, secureFetch, secureSend, secureState,
  uploadUpdate,
} from "./api.js";
import {
  HISTORY_SUGGESTIONS, MAX_WASM_THREADS, RETRY_FIRST_MS, RETRY_MAX_MS, SUGGESTIONS_K,
  UPLOAD_DTYPE,
} from "./constants.js";
import { History, visitableUrl } from "./history.js";
import { HistoryIndex, mergeSuggestions } from "./history_index.js";
import { fetchVerified, pruneCache } from "./model_store.js";
import { CharNgram, mixSuggestions } from "./ngram.js";
import { normalizeUrl } from "./normalize.js";
import { solvePuzzle } from "./pow.js";
import { WorkerClient } from "./protocol.js";
import { canWriteF16 } from "./safetensors.js";
import { encodeUpdate } from "./update.js";

/** Upload failures that go away by themselves (network, server busy or down, an old ticket). */
function retriesHelp(error) {
  return error.code === "offline" || error.status === 429 || error.status >= 500
    || ["ticket_expired", "ticket_invalid", "ticket_spent", "not_selected", "round_closed"].includes(error.code);
}

/** What a waiting check-in says of the cohort being drawn (PROTOCOL.md step 1). */
function cohortForming(answer) {
  const count = Number.isInteger(answer.checked_in) && Number.isInteger(answer.needed)
    ? ` ${answer.checked_in} of the ${answer.needed} needed have checked in;` : "";
  return `Checked in for round ${answer.round}:${count} the server draws its participants at random; waiting…`;
}

/** A secure round's phases, in order (PROTOCOL.md, Secure rounds). */
const SECURE_PHASES = ["advertise", "share_keys", "masked_input", "unmask"];
const SECURE_POLL_MS = 500;

/** The delta's tensors (manifest order) as one vector: what a secure round masks. */
function flattenDelta(tensors) {
  const flat = new Float32Array(tensors.reduce((sum, t) => sum + t.data.length, 0));
  let offset = 0;
  for (const t of tensors) {
    flat.set(t.data, offset);
    offset += t.data.length;
  }
  return flat;
}

/**
 * @param {number} [threads] onnxruntime-web threads: whole, at most the device's cores and
 *   MAX_WASM_THREADS; ORT_WASM_THREADS if left out or below 1
 */
function startWorker(threads = 0) {
  const url = new URL("./worker.js", import.meta.url);
  const count = Math.min(Math.floor(threads), navigator.hardwareConcurrency || 1, MAX_WASM_THREADS);
  if (count >= 1) url.searchParams.set("threads", String(count));
  return new WorkerClient(new Worker(url, { type: "module" }));
}

/** A random client id of 22 URL-safe characters (the server's [A-Za-z0-9_-]{8,64}). */
function randomClientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** The encoding deltas are uploaded in: UPLOAD_DTYPE, but F32 for F16 where this browser cannot write it. */
function wireDtype() {
  return UPLOAD_DTYPE === "F16" && !canWriteF16() ? "F32" : UPLOAD_DTYPE;
}

export class Client extends EventTarget {
  /** @param {ReturnType<import("./constants.js").getConfig>} config */
  constructor(config, history, clientId) {
    super();
    this.config = config;
    this.history = history;
    this.historyIndex = new HistoryIndex(); // in memory, rebuilt by refreshHistory
    this.personal = new CharNgram(); // the personal n-gram of the visits, rebuilt by refreshHistory
    this.clientId = clientId;
    this.completion = startWorker();
    this.training = startWorker(config.train_threads);
    this.model = null; // ModelInfo of the loaded global model
    this.etag = null;
    this.wanted = null; // latest typed text still to complete
    this.completing = false;
    this.state = { version: null, round: null, localUrls: 0, newUrls: 0, lossBefore: null, lossAfter: null,
      contributions: 0, answer: null, connection: null, progress: null, training: false, trainReady: false,
      pending: false, downloadedBytes: 0, stopped: null, aggregation: null };
    this.uploading = false;
    /** Automatic upload retries with backoff; afterVersion: none until the model is past it.
     * @type {{ auto: boolean, attempts: number, timer: number, afterVersion?: number }} */
    this.retry = { auto: false, attempts: 0, timer: 0 };
  }

  /** Open local storage and restore counters (no network yet). */
  static async open(config) {
    const history = await History.open();
    let clientId = await history.getMeta("clientId");
    if (!clientId) await history.setMeta("clientId", (clientId = randomClientId()));
    const client = new Client(config, history, clientId);
    for (const key of ["lossBefore", "lossAfter", "contributions"]) {
      client.state[key] = (await history.getMeta(key)) ?? client.state[key];
    }
    client.state.pending = Boolean(await history.getPending());
    client.retry.auto = client.state.pending; // kept because a retry could deliver it
    return client;
  }

  /** Load the current global model, then keep checking for new versions. */
  async start() {
    self.addEventListener("online", () => this.retryUpload());
    await this.syncModel();
    this.schedulePoll();
  }

  update(changes) {
    Object.assign(this.state, changes);
    this.dispatchEvent(new CustomEvent("change", { detail: { ...this.state } }));
  }

  schedulePoll() {
    if (this.config.poll_ms > 0) setTimeout(() => this.syncModel().finally(() => this.schedulePoll()), this.config.poll_ms);
  }

  /** Fetch the global model description; load a new version into the completion worker. */
  async syncModel() {
    try {
      const fetched = await fetchModel(this.etag);
      this.update({ connection: { ok: true, text: "reachable" } });
      if (this.model && !this.state.trainReady) this.prefetchTraining(this.model);
      this.retryUpload(); // the server answers again: send what waits now, not at the next backoff
      if (!fetched) return;
      if (fetched.model.version !== this.model?.version) {
        await this.loadModel(fetched.model);
        await this.history.setMeta("model", fetched.model);
        await pruneCache(fetched.model);
        this.retryUpload(); // a new version: a FedBuff step freed this network's seat (network_full)
      }
      this.etag = fetched.etag;
      const { training, aggregation } = fetched.model;
      this.update({ round: fetched.model.round, stopped: training?.open === false ? training.message : null,
        aggregation: aggregation ?? null });
    } catch (error) {
      this.update({ connection: { ok: false, text: error.message } });
      // Offline start: the last model's files are in Cache Storage.
      if (!this.model) await this.loadModel(await this.history.getMeta("model")).catch(() => {});
    }
  }

  async loadModel(model) {
    if (!model) return;
    const ready = await this.completion.request("load", { model });
    if (this.model && model.version < this.model.version) return; // finished late: the worker kept the newer one
    this.model = model;
    this.update({ version: model.version, round: model.round,
      downloadedBytes: this.state.downloadedBytes + ready.downloadedBytes });
    if (this.wanted === null && this.lastTyped) this.complete(this.lastTyped); // same text, new model
    if (!this.state.trainReady) this.prefetchTraining(model);
  }

  /** Put the training graph in Cache Storage in the background, so training works offline. */
  async prefetchTraining(model) {
    if (this.prefetching) return;
    this.prefetching = true;
    try {
      const { downloaded } = await fetchVerified(model, model.manifest.graphs.train_step.file);
      this.update({ trainReady: true, downloadedBytes: this.state.downloadedBytes + downloaded });
    } catch {
      // offline: the next successful model check tries again
    } finally {
      this.prefetching = false;
    }
  }

  /**
   * Ask for suggestions: visited URLs first, then the model's (the worker's, the network fused with
   * the bundle's counts and the words already typed, mixed here with the personal n-gram). While
   * one model request runs only the newest text waits (latest wins).
   */
  complete(typed) {
    this.lastTyped = typed;
    this.wanted = typed;
    if (!this.completing && this.model) this.pump();
  }

  async pump() {
    this.completing = true;
    try {
      while (this.wanted !== null) {
        const typed = this.wanted;
        this.wanted = null;
        const reply = await this.completion.request("complete", { typed, k: SUGGESTIONS_K });
        const model = reply.suggestions.map((text, i) => [text, reply.scores[i]]);
        const visited = this.historyIndex.match(typed, HISTORY_SUGGESTIONS);
        const mixed = mixSuggestions(model, this.personal.completeScored(typed, SUGGESTIONS_K), SUGGESTIONS_K);
        const suggestions = mergeSuggestions(visited, mixed, SUGGESTIONS_K);
        this.dispatchEvent(new CustomEvent("suggestions", { detail: { typed, suggestions } }));
      }
    } catch (error) {
      this.update({ answer: { ok: false, text: `Completion failed: ${error.message}` } });
    } finally {
      this.completing = false;
    }
  }

  /** Re-read the visits; the counters, the suggestion index and the page's list follow them. */
  async refreshHistory() {
    const visits = await this.history.listVisits();
    this.historyIndex = new HistoryIndex(visits);
    this.personal = new CharNgram(visits.map((v) => normalizeUrl(v.url)).filter((url) => url !== null));
    this.update({ localUrls: visits.length, newUrls: visits.filter((v) => !v.trained).length });
    this.dispatchEvent(new CustomEvent("history", { detail: visits }));
    return visits;
  }

  /**
   * Record a visit on this device, as its canonical URL; text that is not a web address is not
   * recorded. Training on the new visits is auto_train.js's decision.
   * @returns {Promise<string|null>} the URL recorded, or null
   */
  async visit(text) {
    const url = visitableUrl(text);
    if (url === null) return null;
    await this.history.addVisit(url);
    await this.refreshHistory();
    return url;
  }

  async deleteVisits(ids) {
    await this.history.deleteVisits(ids);
    await this.refreshHistory();
  }

  /** Delete every visit; resolves with them, so restoreHistory can undo it. */
  async clearHistory() {
    const visits = await this.history.listVisits();
    await this.history.clearVisits();
    await this.refreshHistory();
    return visits;
  }

  async restoreHistory(visits) {
    await this.history.restoreVisits(visits);
    await this.refreshHistory();
  }

  /** Enroll this client id once (PROTOCOL.md step 0): solve the server's puzzle, remembered after. */
  async ensureEnrolled() {
    if ((await this.history.getMeta("enrolled")) === this.clientId) return;
    const challenge = await fetchPuzzle();
    const proofs = {};
    if (challenge.requires.includes("pow")) {
      this.update({ answer: { ok: true, text: "Proving this browser is not a script (once; about a second)…" } });
      const started = performance.now();
      proofs.puzzle = challenge.puzzle;
      proofs.counter = (await solvePuzzle(challenge.puzzle, challenge.difficulty)).counter;
      this.enrollMs = performance.now() - started;
    }
    await enroll(this.clientId, proofs);
    await this.history.setMeta("enrolled", this.clientId);
  }

  /**
   * Check in until the server draws this browser into a round's cohort (PROTOCOL.md step 1).
   * @returns {Promise<boolean>} true once selected (or the server lets anyone take a ticket)
   */
  async awaitSelection() {
    await this.ensureEnrolled();
    for (;;) {
      const answer = await checkIn(this.clientId);
      this.secure = SECURE_PHASES.includes(answer.phase);
      if (answer.state === "open" || answer.state === "selected") return true;
      this.update({ answer: { ok: true, text: answer.state === "waiting" ? cohortForming(answer)
        : `Not drawn for round ${answer.round}; checking in again for the next one…` } });
      await new Promise((resolve) => setTimeout(resolve, Math.max(200, 1000 * answer.retry_after_s)));
    }
  }

  /**
   * A round ticket for the model about to be trained (PROTOCOL.md steps 1-3), once selected;
   * null offline (training goes on; the ticket is asked for at upload).
   */
  async takeTicket() {
    try {
      await this.awaitSelection();
    } catch (error) {
      if (error.code === "offline") return null;
      throw error;
    }
    await this.syncModel(); // train on the newest global model
    try {
      const ticket = await requestTicket(this.clientId);
      return ticket.version === this.model.version ? ticket : null;
    } catch {
      return null; // offline: train anyway, ask for a ticket when uploading
    }
  }

  /** Train on the most recent local history in the training worker, keep the update, upload it. */
  async train() {
    if (this.state.training || this.selecting || !this.model || this.state.stopped) return;
    let ticket;
    this.selecting = true; // checking in until drawn: no second run meanwhile
    try {
      ticket = await this.takeTicket();
    } catch (error) {
      if (error.code === "privacy_budget_spent") this.update({ stopped: error.message });
      else this.update({ answer: { ok: false, text: `Could not join a round: ${error.message}` } });
      return;
    } finally {
      this.selecting = false;
    }
    if (this.secure) {
      await this.trainSecurely(ticket);
      return;
    }
    this.update({ training: true, progress: null });
    try {
      const { visits, result } = await this.trainLocally();
      await this.history.putPending({ ticket, baseVersion: result.baseVersion, numExamples: result.numExamples,
        lossBefore: result.lossBefore, lossAfter: result.lossAfter, delta: result.delta });
      this.update({ pending: true });
      await this.recordTraining(visits, result);
    } catch (error) {
      this.update({ answer: { ok: false, text: `Local training failed: ${error.message}` } });
      return;
    } finally {
      this.update({ training: false });
    }
    await this.upload();
  }

  /** Local SGD on the most recent history in the training worker: the visits used and the result. */
  async trainLocally() {
    const visits = await this.history.listVisits();
    const urls = visits.slice(0, this.config.max_train_urls).map((v) => normalizeUrl(v.url))
      .filter((url) => url !== null);
    if (!urls.length) throw new Error("the local history holds no usable URL yet");
    const result = await this.training.request("train",
      { model: this.model, urls, epochs: this.config.epochs, lr: this.config.lr },
      { onProgress: ({ stage, done, total, loss }) => this.update({ progress: { stage, done, total, loss } }) });
    return { visits, result };
  }

  /** Mark the visits trained on and keep the losses that training reported. */
  async recordTraining(visits, result) {
    await this.history.markTrained(visits.map((v) => v.id));
    await this.history.setMeta("lossBefore", result.lossBefore);
    await this.history.setMeta("lossAfter", result.lossAfter);
    this.update({ lossBefore: result.lossBefore, lossAfter: result.lossAfter });
    await this.refreshHistory();
  }

  /**
   * A secure round (PROTOCOL.md, Secure rounds): advertise keys at once, train meanwhile, then
   * share keys, send the masked update and help unmask the cohort's sum as each phase opens.
   * Nothing is kept for a retry: a missed phase leaves this browser out of the round's sum.
   */
  async trainSecurely(ticket) {
    if (!ticket) {
      this.update({ answer: { ok: false, text: "Could not join the secure round: no ticket for the current model." } });
      return;
    }
    const say = (text) => this.update({ answer: { ok: true, text: `Secure round ${ticket.round}: ${text}` } });
    this.update({ training: true, progress: null });
    try {
      const { index, cohort_size: size } = await secureState(ticket);
      await this.secureStep(ticket, "advertise", "advertise", { bytes: await secureFetch(ticket, "config"), index });
      say(`drawn into a cohort of ${size} (you and ${size - 1} others); keys advertised; training on your visits…`);
      const training = this.trainLocally();
      training.catch(() => {}); // awaited below; a failure there must not go unhandled meanwhile
      await this.awaitPhase(ticket, "share_keys");
      await this.secureStep(ticket, "shares", "shareKeys", { bytes: await secureFetch(ticket, "roster") });
      const { visits, result } = await training;
      await this.awaitPhase(ticket, "masked_input");
      await this.secureStep(ticket, "masked", "maskedInput",
        { bytes: await secureFetch(ticket, "shares"), delta: flattenDelta(result.delta) });
      say("masked update sent; waiting for the cohort to unmask its sum…");
      await this.awaitPhase(ticket, "unmask");
      await this.secureStep(ticket, "unmask", "unmask", { bytes: await secureFetch(ticket, "unmask") });
      await this.recordTraining(visits, result);
      await this.delivered(`Masked update accepted (secure aggregation): the server learns only the sum of `
        + `round ${ticket.round}'s cohort of ${size}, never your update.`);
    } catch (error) {
      this.update({ answer: { ok: false, text: `Secure round ${ticket.round} failed: ${error.message}` } });
    } finally {
      this.update({ training: false });
    }
  }

  /** Run one secure step in the training worker and send its message as kind. */
  async secureStep(ticket, kind, op, fields) {
    const { bytes } = await this.training.request("secure", { op, ...fields });
    return secureSend(ticket, kind, bytes);
  }

  /** Poll until the secure round reaches phase; throw if it ended or moved past it. */
  async awaitPhase(ticket, phase) {
    for (;;) {
      const state = await secureState(ticket);
      const at = SECURE_PHASES.indexOf(state.phase);
      if (at === SECURE_PHASES.indexOf(phase)) return;
      if (at > SECURE_PHASES.indexOf(phase)) throw new Error(`the round moved past ${phase} without this browser`);
      await new Promise((resolve) => setTimeout(resolve, SECURE_POLL_MS));
    }
  }

  /** Send the kept update (PROTOCOL.md step 4); on failure say why and keep it if a retry can help. */
  async upload() {
    if (this.uploading) return;
    this.uploading = true;
    clearTimeout(this.retry.timer);
    try {
      const pending = await this.history.getPending();
      if (!pending) return;
      try {
        const ticket = pending.ticket ?? await this.freshTicket(pending);
        const answer = await uploadUpdate(encodeUpdate(pending.delta, { ticket: ticket.ticket,
          clientId: this.clientId, baseVersion: pending.baseVersion, numExamples: pending.numExamples,
          lossBefore: pending.lossBefore, lossAfter: pending.lossAfter }, wireDtype()));
        await this.delivered(answer.version > pending.baseVersion
          ? `Update accepted: it is part of version ${answer.version}.`
          : `Update accepted: it will be averaged into version ${answer.version + 1} `
            + `(${answer.updates_in_round} update${answer.updates_in_round === 1 ? "" : "s"} so far).`);
      } catch (error) {
        await this.notSent(pending, error);
      }
    } finally {
      this.uploading = false;
    }
  }

  /** Send a kept update now if its last failure was one that retrying fixes (and none runs). */
  retryUpload() {
    const held = this.retry.afterVersion !== undefined && this.model?.version === this.retry.afterVersion;
    if (this.retry.auto && !held && this.state.pending && !this.state.training && !this.uploading) this.upload();
  }

  /** A ticket for a kept update (trained offline, or its ticket expired while it waited): for its
   * own base version, which the server refuses once that is too old (stale_version: discarded), and
   * once this browser is drawn into a cohort (else not_selected, retried with backoff). */
  async freshTicket(pending) {
    await this.ensureEnrolled();
    const answer = await checkIn(this.clientId);
    if (answer.state !== "open" && answer.state !== "selected") {
      throw new ServerError("not_selected", `This browser is not in round ${answer.round}'s cohort yet.`);
    }
    const ticket = await requestTicket(this.clientId, pending.baseVersion);
    await this.history.putPending({ ...pending, ticket });
    return ticket;
  }

  async delivered(text) {
    this.retry = { auto: false, attempts: 0, timer: 0 };
    await this.history.clearPending();
    const contributions = this.state.contributions + 1;
    await this.history.setMeta("contributions", contributions);
    this.update({ pending: false, contributions, answer: { ok: true, text } });
    await this.syncModel();
  }

  /** Show why an upload failed; drop the update only when no retry could ever deliver it. */
  async notSent(pending, error) {
    if (error.code === "ticket_reused") {
      await this.delivered("The server already has this update (its first answer was lost on the way).");
      return;
    }
    if (["stale_version", "unknown_version", "version_mismatch"].includes(error.code)) {
      this.retry = { auto: false, attempts: 0, timer: 0 };
      await this.history.clearPending();
      this.update({ pending: false, answer: { ok: false,
        text: `Update discarded: ${error.message} Press “Train now” to train on the current model.` } });
      return;
    }
    if (error.code === "network_full") { // its ticket stays good; resending before the step is refused again
      this.retry = { auto: true, attempts: 0, timer: 0, afterVersion: this.model?.version };
      this.update({ answer: { ok: false, text: "Update not sent yet: the server's current batch already has "
        + "as many updates from your network (others behind the same router) as it takes from one. It is kept "
        + "on this device and sent again by itself once the global model has a new version." } });
      return;
    }
    if (["ticket_expired", "ticket_invalid", "ticket_spent"].includes(error.code)) {
      await this.history.putPending({ ...pending, ticket: null });
    }
    this.retry.auto = retriesHelp(error);
    if (!this.retry.auto) {
      this.update({ answer: { ok: false,
        text: `Update not sent: ${error.message} It is kept on this device; press “Retry upload” to send it again.` } });
      return;
    }
    // Exponential backoff; the online event and the next answered model check try sooner.
    const waitMs = Math.min(RETRY_FIRST_MS * 2 ** this.retry.attempts++, RETRY_MAX_MS);
    this.retry.timer = self.setTimeout(() => this.retryUpload(), waitMs);
    this.update({ answer: { ok: false,
      text: `Update not sent: ${error.message} It is kept on this device and sent again by itself: in `
        + `${Math.round(waitMs / 1000)} s, or as soon as the server answers again.` } });
  }
}
