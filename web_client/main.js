/**
 * DOM only: the URL combobox (WAI-ARIA 1.2 combobox with a listbox popup), the model panel and
 * the local history list. Everything else happens in client.js and the workers.
 */

import { Client } from "./client.js";
import { getConfig } from "./constants.js";

const $ = (id) => document.getElementById(id);
const input = $("url");
const list = $("suggestions");

const combo = { typed: "", items: [], active: -1, open: false, pendingSince: null };

function setOpen(open) {
  combo.open = open && combo.items.length > 0 && document.activeElement === input;
  list.classList.toggle("open", combo.open);
  input.setAttribute("aria-expanded", String(combo.open));
}

function setActive(index) {
  combo.active = index;
  [...list.children].forEach((option, i) => option.setAttribute("aria-selected", String(i === index)));
  if (index >= 0) {
    input.setAttribute("aria-activedescendant", list.children[index].id);
    list.children[index].scrollIntoView({ block: "nearest", inline: "nearest" });
  } else {
    input.removeAttribute("aria-activedescendant");
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
    option.setAttribute("aria-label", `${text}, from your history`);
    const tag = document.createElement("span");
    tag.className = "history-tag";
    tag.setAttribute("aria-hidden", "true"); // the label says it
    tag.textContent = "history";
    option.append(tag);
  }
  return option;
}

function showSuggestions({ typed, suggestions }) {
  if (typed !== input.value) return; // an answer for text the user has already changed
  combo.typed = typed;
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

function accept(index) {
  input.value = combo.items[index].text;
  setOpen(false);
  input.setSelectionRange(input.value.length, input.value.length);
}

function acceptActive() {
  accept(Math.max(combo.active, 0));
  return true;
}

/** Combobox keys; a handler returns true when it used the key (then the browser must not). */
function onKeyDown(event, client) {
  const count = combo.items.length;
  const atEnd = input.selectionStart === input.value.length;
  const keys = {
    ArrowDown: () => (combo.open ? setActive(combo.active + 1 < count ? combo.active + 1 : -1) : setOpen(true), true),
    ArrowUp: () => (combo.open && setActive(combo.active > -1 ? combo.active - 1 : count - 1), true),
    Tab: () => combo.open && acceptActive(),
    ArrowRight: () => combo.open && atEnd && acceptActive(),
    Escape: () => combo.open && (setOpen(false), true),
    Enter: () => (visit(client, combo.open && combo.active >= 0 ? combo.items[combo.active].text : input.value), true),
  };
  const handler = keys[event.key];
  if (handler && !event.altKey && !event.ctrlKey && !event.metaKey && handler() === true) event.preventDefault();
}

async function visit(client, url) {
  const text = url.trim();
  if (!text) return;
  input.value = "";
  combo.items = [];
  setOpen(false);
  $("visit-note").textContent = `Visited ${text}: recorded on this device only.`;
  await client.visit(text);
}

function renderHistory(client, visits) {
  $("history").replaceChildren(...visits.map((entry) => {
    const item = document.createElement("li");
    const url = document.createElement("span");
    url.className = "history-url";
    url.textContent = entry.url;
    const time = document.createElement("time");
    time.dateTime = new Date(entry.visitedAt).toISOString();
    time.textContent = new Date(entry.visitedAt).toLocaleTimeString();
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete ${entry.url} from the local history`);
    remove.addEventListener("click", () => client.deleteVisit(entry.id));
    item.append(url, time, remove);
    return item;
  }));
}

const loss = (value) => (value === null || value === undefined ? "–" : value.toFixed(3));

function renderState(state) {
  input.disabled = state.version === null;
  if (state.version !== null && $("visit-note").textContent === "Loading the model…") $("visit-note").textContent = "";
  $("model-version").textContent = state.version === null ? "–" : `v${state.version} (round ${state.round})`;
  $("local-urls").textContent = `${state.localUrls} (${state.newUrls} not yet trained on)`;
  $("local-loss").textContent = `${loss(state.lossBefore)} → ${loss(state.lossAfter)}`;
  $("contributions").textContent = String(state.contributions);
  $("downloaded").textContent = `${(state.downloadedBytes / 1e6).toFixed(2)} MB`;
  $("server-status").textContent = state.connection?.text ?? "–";
  $("server-status").classList.toggle("error", state.connection?.ok === false);
  const { progress } = state;
  $("train-progress").value = progress ? progress.done / progress.total : 0;
  $("train-status").textContent = !progress ? "Idle" : state.training
    ? `${progress.stage}: step ${progress.done}/${progress.total}, loss ${progress.loss.toFixed(3)}` : "Done";
  $("train-now").disabled = state.training || state.version === null || !state.trainReady;
  $("retry-upload").hidden = !state.pending || state.training;
  const answer = $("server-answer");
  answer.textContent = state.answer?.text ?? "";
  answer.classList.toggle("error", state.answer?.ok === false);
  document.body.dataset.version = state.version ?? "";
  document.body.dataset.training = String(state.training);
}

function wire(client) {
  client.addEventListener("change", (event) => renderState(event.detail));
  client.addEventListener("suggestions", (event) => showSuggestions(event.detail));
  client.addEventListener("history", (event) => renderHistory(client, event.detail));
  input.addEventListener("input", (event) => {
    combo.pendingSince ??= event.timeStamp;
    if (input.value) client.complete(input.value);
    else (combo.items = [], combo.pendingSince = null, setOpen(false));
  });
  input.addEventListener("keydown", (event) => onKeyDown(event, client));
  input.addEventListener("blur", () => setOpen(false));
  input.addEventListener("focus", () => combo.typed === input.value && setOpen(true));
  list.addEventListener("pointerdown", (event) => event.preventDefault()); // keep focus in the input
  list.addEventListener("click", (event) => {
    const option = event.target.closest("[role=option]");
    if (option) accept([...list.children].indexOf(option));
  });
  $("train-now").addEventListener("click", () => client.train());
  $("retry-upload").addEventListener("click", () => client.upload());
  $("clear-history").addEventListener("click", () => client.clearHistory());
}

async function main() {
  try {
    const client = await Client.open(getConfig(location.search));
    wire(client);
    renderState(client.state);
    await client.refreshHistory();
    await client.start();
  } catch (error) {
    $("visit-note").textContent = `The page could not start: ${error.message}`;
  }
}

main();
