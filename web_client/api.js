/**
 * The server protocol (docs/PROTOCOL.md) as seen from the page: model polling with ETags,
 * round tickets and update uploads. Every failure becomes a ServerError whose message is fit
 * to show the user; a network failure has code "offline".
 */

export class ServerError extends Error {
  /**
   * @param {string} code the server's error code, or "offline" / "http_<status>"
   * @param {string} message what to tell the user
   * @param {number} [status] HTTP status, if the server answered
   */
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

async function send(url, options = {}) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store", ...options });
  } catch (error) {
    throw new ServerError("offline", `The server cannot be reached (${error.message}).`);
  }
  if (response.ok || response.status === 304) return response;
  let body = {};
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's error page, say): fall back to the status line
  }
  throw new ServerError(body.error ?? `http_${response.status}`,
    body.message ?? `The server answered HTTP ${response.status} ${response.statusText}.`, response.status);
}

/**
 * The current global model, or null if it is still the one with this ETag.
 * @returns {Promise<{model: import("./protocol.js").ModelInfo, etag: string|null}|null>}
 */
export async function fetchModel(etag) {
  const response = await send("/api/model", { headers: etag ? { "If-None-Match": etag } : {} });
  if (response.status === 304) return null;
  return { model: await response.json(), etag: response.headers.get("ETag") };
}

/**
 * A ticket for uploading one update in the current round: for the current version, or for
 * `baseVersion`, the one a kept update was trained on (refused once it is too old).
 * @param {string} clientId
 * @param {number} [baseVersion]
 */
export async function requestTicket(clientId, baseVersion) {
  const request = baseVersion === undefined ? { client_id: clientId } : { client_id: clientId, base_version: baseVersion };
  const response = await send("/api/tickets", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
  });
  return response.json();
}

/**
 * Upload one safetensors update; resolves with the server's acceptance.
 * @returns {Promise<{accepted: boolean, round: number, updates_in_round: number, version: number}>}
 */
export async function uploadUpdate(bytes) {
  const response = await send("/api/updates", {
    method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: bytes,
  });
  return response.json();
}

/**
 * What enrolling a client id takes (PROTOCOL.md step 0): the proofs, and a puzzle when one is due.
 * @returns {Promise<{requires: string[], puzzle?: string, difficulty?: number, expires_at?: string}>}
 */
export async function fetchPuzzle() {
  return (await send("/api/puzzle")).json();
}

/**
 * Enroll a client id with its proofs (a solved puzzle: {puzzle, counter}).
 * @returns {Promise<{client_id: string, enrolled: boolean}>}
 */
export async function enroll(clientId, proofs) {
  const response = await send("/api/enrollments", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ client_id: clientId, ...proofs }),
  });
  return response.json();
}

/**
 * Check in for a round (PROTOCOL.md step 1): whether this client is in the cohort the server drew.
 * @returns {Promise<{round: number, version: number, phase: string,
 *   state: "open"|"waiting"|"selected"|"not_selected", retry_after_s: number, deadline: string|null}>}
 */
export async function checkIn(clientId) {
  const response = await send("/api/checkins", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ client_id: clientId }),
  });
  return response.json();
}

/** Headers of a secure-round request: the member's round ticket authenticates it. */
function bearer(ticket, extra = {}) {
  return { Authorization: `Bearer ${ticket.ticket}`, ...extra };
}

/**
 * Where this member's secure round stands (PROTOCOL.md, Secure rounds).
 * @returns {Promise<{round: number, phase: string, index: number, cohort_size: number, deadline: string}>}
 */
export async function secureState(ticket) {
  return (await send("/api/secure", { headers: bearer(ticket) })).json();
}

/**
 * One server message of the secure round: "config", "roster", "shares" (this member's) or "unmask".
 * @returns {Promise<Uint8Array>}
 */
export async function secureFetch(ticket, what) {
  return new Uint8Array(await (await send(`/api/secure/${what}`, { headers: bearer(ticket) })).arrayBuffer());
}

/**
 * Send this member's message of the current phase ("advertise", "shares", "masked", "unmask").
 * @returns {Promise<{accepted: boolean, round: number, phase: string}>}
 */
export async function secureSend(ticket, kind, bytes) {
  const response = await send(`/api/secure/${kind}`, {
    method: "POST", headers: bearer(ticket, { "Content-Type": "application/octet-stream" }), body: bytes,
  });
  return response.json();
}
