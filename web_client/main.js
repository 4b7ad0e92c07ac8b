/**
 * DOM only: the URL combobox (WAI-ARIA 1.2 combobox with a listbox popup and inline completion),
 * the guide, the model panel and the local history list. Everything else happens in client.js,
 * auto_train.js and the workers.
 */

import { AutoTrain } from "./auto_train.js";
import { Client } from "./client.js";
import { SERVICE_WORKER_URL, UNDO_CLEAR_MS, getConfig } from "./constants.js";
import { groupVisits } from "./history_index.js";
import { pastHost } from "./normalize.js";
import { lossInWords, megabytes, progressInWords } from "./words.js";

const $ = (id) => document.getElementById(id);
const input = /** @type {HTMLInputElement} */ ($("url"));
const list = $("suggestions");
const GUIDE_HIDDEN_KEY = "fedurl.guideHidden"; // localStorage: the guide was dismissed

/**
 * typed: what the user typed (the input may show more: the inline completion, selected);
 * inline: whether to complete inline (only when typing at the end, never after a deletion, as in
 * browsers' URL bars).
 */
const combo = { typed: "", items: [], active: -1, open: false, inline: false, pendingSince: null };

function setOpen(open) {
  combo.open = open && combo.items.length > 0 && document.activeElement === input;
  list.classList.toggle("open", combo.open);
  input.setAttribute("aria-expanded", String(combo.open));
}

/** Show text in the input with its part from `from` on selected, so typing on replaces it. */
function fill(text, from) {
  input.value = text;
  input.setSelectionRange(from, text.length);
}

/**
 * Whether suggestion item may be completed inline after typed: a visited URL always, the model's
 * guess only while the host is typed (as browsers autofill hosts). Past the host a guess is what
 * the user wants about one time in ten (docs/RESULTS.md, prefix share), and Enter after a whole
 * typed URL would visit the guess instead (a visit to sys.html.html, which training then taught).
 */
function completesInline(item, typed) {
  return item?.source === "history" || !pastHost(typed);
}

/** The typed text plus the top suggestion's rest, when inline completion applies. */
function inlineCompletion() {
  const top = combo.items[0];
  return combo.inline && top?.text.startsWith(combo.typed) && completesInline(top, combo.typed) ? top.text : combo.typed;
}

/** Highlight option `index` and show it in the input; -1 goes back to the typed text. */
function setActive(index) {
  combo.active = index;
  [...list.children].forEach((option, i) => option.setAttribute("aria-selected", String(i === index)));
  if (index >= 0) {
    input.setAttribute("aria-activedescendant", list.children[index].id);
    list.children[index].scrollIntoView({ block: "nearest", inline: "nearest" });
    fill(combo.items[index].text, combo.items[index].text.length);
  } else {
    input.removeAttribute("aria-activedescendant");
    if (input.value !== inlineCompletion()) fill(inlineCompletion(), combo.typed.length); // else keep the caret
  }
}

/** One option: the typed part plain, the completion emphasised; a visited URL is tagged "history". */
function optionElement({ text, source }, index) {
  const option = document.createElement("li");
  option.id = `suggestion-${index}`;
  option.setAttribute("role", "option");
  option.setAttribute("aria-selected", "false");
  option.dataset.value = text;
  option.dataset.source = source;
  const label = document.createElement("span");
  label.className = "option-text";
  const rest = document.createElement("strong");
  rest.textContent = text.slice(combo.typed.length);
  label.append(text.slice(0, combo.typed.length), rest);
  option.append(label);
  if (source === "history") {
    // Heard as "<url>, from your history" (text, not aria-label, so the name contains all that is seen).
    label.append(Object.assign(document.createElement("span"),
      { className: "spoken", textContent: ", from your history" }));
    const tag = document.createElement("span");
    tag.className = "history-tag";
    tag.setAttribute("aria-hidden", "true");
    tag.textContent = "history";
    option.append(tag);
  }
  return option;
}

function showSuggestions({ typed, suggestions }) {
  if (typed !== combo.typed || document.activeElement !== input) return; // the user has moved on
  combo.items = suggestions;
  list.replaceChildren(...suggestions.map(optionElement));
  list.dataset.for = typed;
  setActive(-1);
  setOpen(true);
  if (combo.pendingSince !== null) {
    performance.measure("keystroke-to-suggestions", { start: combo.pendingSince, end: performance.now() });
    combo.pendingSince = null;
  }
}

/** Take option `index` into the input, caret at the end; the list closes. */
function accept(index) {
  combo.typed = combo.items[index].text;
  combo.inline = false;
  fill(combo.typed, combo.typed.length);
  setActive(-1);
  setOpen(false);
}

/**
 * Escape: close the list, forget the highlight and drop the inline completion, also one whose
 * suggestions are still on their way. True when there was something to undo.
 */
function dismiss() {
  const used = combo.open || input.value !== combo.typed;
  combo.inline = false;
  setActive(-1);
  setOpen(false);
  return used;
}

/** Combobox keys; a handler returns true when it used the key (then the browser must not). */
function onKeyDown(event, client) {
  const count = combo.items.length;
  const atEnd = input.selectionEnd === input.value.length;
  const keys = {
    ArrowDown: () => (combo.open ? setActive(combo.active + 1 < count ? combo.active + 1 : -1) : setOpen(true), true),
    ArrowUp: () => (combo.open && setActive(combo.active > -1 ? combo.active - 1 : count - 1), true),
    Tab: () => combo.open && (accept(Math.max(combo.active, 0)), true),
    ArrowRight: () => combo.open && atEnd && (accept(Math.max(combo.active, 0)), true),
    Escape: dismiss,
    Enter: () => (visit(client, input.value), true), // what the input shows, completion included
  };
  const handler = keys[event.key];
  if (handler && !event.altKey && !event.ctrlKey && !event.metaKey && handler() === true) event.preventDefault();
}

function onInput(event, client) {
  combo.pendingSince ??= event.timeStamp;
  combo.typed = input.value;
  combo.inline = !event.inputType?.startsWith("delete") && input.selectionStart === input.value.length;
  combo.active = -1;
  input.removeAttribute("aria-activedescendant");
  if (!input.value) {
    combo.items = [];
    combo.pendingSince = null;
    setOpen(false);
    return;
  }
  // Typing along the shown completion keeps it shown until the new suggestions arrive.
  if (combo.inline && combo.items[0]?.text.startsWith(input.value) && completesInline(combo.items[0], input.value)) {
    fill(combo.items[0].text, input.value.length);
  }
  client.complete(combo.typed);
}

async function visit(client, text) {
  const note = $("visit-note");
  if (!text.trim()) return;
  const url = await client.visit(text);
  if (url === null) {
    note.textContent = `“${text.trim()}” is not a web address (like example.com/page), so it was not recorded.`;
    return;
  }
  if (input.value === text) { // cleared only if nothing was typed while the visit was being saved
    combo.typed = input.value = "";
    combo.items = [];
    setOpen(false);
  }
  note.textContent = `Visited ${url}: recorded on this device only.`;
}

/** The local history, one row per address with its visit count. */
function renderHistory(client, visits) {
  const rows = groupVisits(visits).map((entry) => {
    const item = document.createElement("li");
    const url = document.createElement("span");
    url.className = "history-url";
    url.textContent = entry.url;
    const count = document.createElement("span");
    count.className = "history-count";
    count.textContent = entry.visits === 1 ? "1 visit" : `${entry.visits} visits`;
    const time = document.createElement("time");
    time.dateTime = new Date(entry.lastVisit).toISOString();
    time.textContent = new Date(entry.lastVisit).toLocaleTimeString();
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete ${entry.url} from the local history`);
    remove.addEventListener("click", () => client.deleteVisits(entry.ids));
    const details = document.createElement("span");
    details.className = "history-details";
    details.append(count, " · ", time);
    item.append(url, details, remove);
    return item;
  });
  $("history").replaceChildren(...rows);
  $("history-empty").hidden = rows.length > 0;
  /** @type {HTMLButtonElement} */ ($("clear-history")).disabled = rows.length === 0;
}

/** Why "Train now" cannot run yet, or what it does when it can. */
function trainHint(state) {
  if (state.stopped) {
    return "Training has stopped for privacy: this federation has spent its privacy budget, so it takes "
      + "no more updates from anyone. Suggestions keep working.";
  }
  if (state.training) return "Training runs in the background; suggestions keep working.";
  if (state.version === null) return "“Train now” waits for the model to load.";
  if (!state.trainReady) return "“Train now” waits for the training part of the model to download.";
  if (state.localUrls === 0) return "“Train now” needs at least one visit: type an address and press Enter.";
  return "“Train now” learns from your visits at once and sends only the weight change.";
}

/** What each server aggregation mode means for this page's updates. */
const AGGREGATION_WORDS = {
  secure: "secure: updates are masked in this browser; the server learns only a cohort's sum",
  plain: "plain: the server receives each update (clipped and averaged with the others)",
};

function renderState(state) {
  input.disabled = state.version === null;
  if (state.version !== null && $("visit-note").textContent === "Loading the model…") $("visit-note").textContent = "";
  $("model-version").textContent = state.version === null ? "–" : `version ${state.version}`;
  $("local-urls").textContent = `${state.localUrls} (${state.newUrls} not yet trained on)`;
  $("loss-words").textContent = lossInWords(state.lossBefore, state.lossAfter);
  const trained = state.lossBefore !== null && state.lossAfter !== null;
  $("loss-numbers").hidden = !trained;
  if (trained) $("local-loss").textContent = `${state.lossBefore.toFixed(3)} → ${state.lossAfter.toFixed(3)}`;
  $("contributions").textContent = String(state.contributions);
  $("downloaded").textContent = megabytes(state.downloadedBytes);
  $("server-status").textContent = state.connection?.text ?? "–";
  $("server-status").classList.toggle("error", state.connection?.ok === false);
  $("aggregation-mode").textContent = AGGREGATION_WORDS[state.aggregation] ?? "–";
  const { progress } = state;
  /** @type {HTMLProgressElement} */ ($("train-progress")).value = progress ? progress.done / progress.total : 0;
  $("train-status").textContent = progress ? progressInWords(progress, state.training) : "Idle.";
  /** @type {HTMLButtonElement} */ ($("train-now")).disabled = state.training || state.version === null
    || !state.trainReady || state.localUrls === 0 || Boolean(state.stopped);
  $("train-hint").textContent = trainHint(state);
  $("retry-upload").hidden = !state.pending || state.training;
  const answer = $("server-answer");
  answer.textContent = state.answer?.text ?? "";
  answer.classList.toggle("error", state.answer?.ok === false);
  document.body.dataset.version = state.version ?? "";
  document.body.dataset.training = String(state.training);
  document.body.dataset.trainReady = String(state.trainReady); // the training graph is cached too
}

/** "Clear all" deletes at once and offers Undo for UNDO_CLEAR_MS. */
async function clearWithUndo(client) {
  const removed = await client.clearHistory();
  const undo = $("undo-clear");
  $("clear-note").textContent = `Cleared ${removed.length} visit${removed.length === 1 ? "" : "s"}.`;
  undo.hidden = false;
  undo.focus();
  const timer = setTimeout(() => { undo.hidden = true; $("clear-note").textContent = ""; }, UNDO_CLEAR_MS);
  undo.onclick = async () => {
    clearTimeout(timer);
    undo.hidden = true;
    await client.restoreHistory(removed);
    $("clear-note").textContent = `Restored ${removed.length} visit${removed.length === 1 ? "" : "s"}.`;
  };
}

/** The guide shows until dismissed; "How it works" brings it back. */
function wireGuide() {
  const guide = $("guide"), show = $("show-guide");
  const setHidden = (hidden) => {
    guide.hidden = hidden;
    show.hidden = !hidden;
    localStorage.setItem(GUIDE_HIDDEN_KEY, hidden ? "1" : "");
  };
  setHidden(localStorage.getItem(GUIDE_HIDDEN_KEY) === "1");
  $("hide-guide").addEventListener("click", () => (setHidden(true), show.focus()));
  show.addEventListener("click", () => (setHidden(false), $("guide-title").focus()));
}

function wire(client) {
  client.addEventListener("change", (event) => renderState(event.detail));
  client.addEventListener("suggestions", (event) => showSuggestions(event.detail));
  client.addEventListener("history", (event) => renderHistory(client, event.detail));
  input.addEventListener("input", (event) => onInput(event, client));
  input.addEventListener("keydown", (event) => onKeyDown(event, client));
  input.addEventListener("blur", () => setOpen(false));
  input.addEventListener("focus", () => input.value === inlineCompletion() && setOpen(true));
  list.addEventListener("pointerdown", (event) => event.preventDefault()); // keep focus in the input
  list.addEventListener("click", (event) => {
    const option = /** @type {Element} */ (event.target).closest("[role=option]");
    if (option) accept([...list.children].indexOf(option));
  });
  $("train-now").addEventListener("click", () => client.train());
  $("retry-upload").addEventListener("click", () => client.upload());
  $("clear-history").addEventListener("click", () => clearWithUndo(client));
}

/** Train by itself when allowed; typing or clicking anywhere restarts the idle wait. */
async function wireAutoTrain(client, config) {
  const auto = await AutoTrain.start(client, config);
  for (const type of ["keydown", "pointerdown"]) document.addEventListener(type, () => auto.noteActivity());
  document.addEventListener("visibilitychange", () => auto.check());
  auto.addEventListener("plan", (event) => { $("auto-train").textContent = event.detail.text; });
  $("auto-train").textContent = auto.text;
}

/** Keep the page, runtime and model available offline (sw.js); without it the page still works online. */
function registerServiceWorker() {
  navigator.serviceWorker?.register(SERVICE_WORKER_URL).catch((error) => console.warn("No offline copy:", error));
}

async function main() {
  wireGuide();
  try {
    const config = getConfig(location.search);
    const client = await Client.open(config);
    wire(client);
    renderState(client.state);
    await client.refreshHistory();
    await wireAutoTrain(client, config);
    registerServiceWorker();
    await client.start();
  } catch (error) {
    $("visit-note").textContent = `The page could not start: ${error.message}`;
  }
}

main();
