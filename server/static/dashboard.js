// Dashboard: polls /api/status and draws three inline-SVG charts. No libraries, no CDN.

/** Milliseconds between refreshes of /api/status. */
const REFRESH_MS = 5000;
/** Chart geometry in SVG user units (the viewBox is 360 x 200). */
const WIDTH = 360, HEIGHT = 200, PAD = { left: 36, right: 10, top: 10, bottom: 24 };
const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = { before: "#c0392b", after: "#1e8449", bars: "#2e86c1", aggregate: "#2e86c1", rollback: "#e67e22",
                 initial: "#555", epsilon: "#7d3c98", budget: "#c0392b" };
/** What each chart's colours mean (drawn once as HTML legends under the charts). */
const LEGENDS = {
  "loss-legend": [[COLORS.before, "before local training"], [COLORS.after, "after local training"]],
  "clients-legend": [[COLORS.bars, "closed round"], [`${COLORS.bars}66`, "open round (still collecting)"]],
  "versions-legend": [[COLORS.initial, "initial"], [COLORS.aggregate, "aggregated"], [COLORS.rollback, "rollback"]],
  "epsilon-legend": [[COLORS.epsilon, "ε so far (cumulative)"], [COLORS.budget, "budget"]],
};

/** Create an SVG element with attributes. */
function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

/** Linear scale from [d0, d1] onto [r0, r1]; a flat domain maps to the middle. */
function scale(d0, d1, r0, r1) {
  return (v) => (d1 === d0 ? (r0 + r1) / 2 : r0 + ((v - d0) / (d1 - d0)) * (r1 - r0));
}

/** Clear an SVG and draw axes with min/max labels; returns the x and y scales.
 * xPad widens the x domain on both sides (bars need half a slot of room); integer y values
 * (counts, versions) get a whole-number top and labels without decimals. */
function axes(svg, xs, ys, yLabel, { xPad = 0, integer = false } = {}) {
  svg.replaceChildren();
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(0, ...ys), integer ? Math.max(1, ...ys) : Math.max(...ys, 1e-9)];
  const label = (v) => (integer ? String(Math.round(v)) : v.toFixed(2));
  const x = scale(x0 - xPad, x1 + xPad, PAD.left, WIDTH - PAD.right);
  const y = scale(y0, y1, HEIGHT - PAD.bottom, PAD.top);
  svg.append(el("line", { x1: PAD.left, y1: HEIGHT - PAD.bottom, x2: WIDTH - PAD.right, y2: HEIGHT - PAD.bottom, stroke: "#999" }),
             el("line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: HEIGHT - PAD.bottom, stroke: "#999" }),
             el("text", { x: 2, y: PAD.top + 8 }, label(y1)),
             el("text", { x: 2, y: HEIGHT - PAD.bottom }, label(y0)),
             el("text", { x: PAD.left, y: HEIGHT - 8 }, String(x0)),
             el("text", { x: WIDTH - PAD.right - 20, y: HEIGHT - 8 }, String(x1)),
             el("text", { x: WIDTH / 2 - 20, y: HEIGHT - 4 }, yLabel));
  return { x, y };
}

/** Empty-state message in a chart. */
function empty(svg, message) {
  svg.replaceChildren(el("text", { x: WIDTH / 2 - 60, y: HEIGHT / 2 }, message));
}

/** Lines of mean loss before and after local training, one point per round with updates. */
function drawLoss(svg, rounds) {
  const points = rounds.filter((r) => r.loss_before !== null);
  if (!points.length) return empty(svg, "no updates yet");
  const { x, y } = axes(svg, points.map((r) => r.id), points.flatMap((r) => [r.loss_before, r.loss_after]), "round");
  for (const key of ["before", "after"]) {
    const path = points.map((r) => `${x(r.id).toFixed(1)},${y(r[`loss_${key}`]).toFixed(1)}`).join(" ");
    svg.append(el("polyline", { points: path, fill: "none", stroke: COLORS[key], "stroke-width": 2 }));
    for (const r of points) svg.append(el("circle", { cx: x(r.id), cy: y(r[`loss_${key}`]), r: 2.5, fill: COLORS[key] }));
  }
}

/** Bars of participants per round. */
function drawClients(svg, rounds) {
  if (!rounds.length) return empty(svg, "no rounds yet");
  const { x, y } = axes(svg, rounds.map((r) => r.id), rounds.map((r) => r.participants), "round",
                      { xPad: 0.5, integer: true });
  const width = Math.max(2, (WIDTH - PAD.left - PAD.right) / (rounds.length + 1) - 2);
  for (const r of rounds) {
    const top = y(r.participants);
    svg.append(el("rect", { x: x(r.id) - width / 2, y: top, width, height: HEIGHT - PAD.bottom - top,
                            fill: COLORS.bars, opacity: r.status === "open" ? 0.4 : 1 }));
  }
}

/** Versions as dots, each joined to its parent by an arc (higher the further back it reaches,
 * so a rollback's jump stands out); rollbacks in orange. */
function drawVersions(svg, versions) {
  if (!versions.length) return empty(svg, "no versions");
  const { x, y } = axes(svg, versions.map((v) => v.version), versions.map((v) => v.version), "version",
                      { integer: true });
  const byVersion = new Map(versions.map((v) => [v.version, v]));
  for (const v of versions) {
    if (v.parent !== null && byVersion.has(v.parent)) {
      const [ax, ay, bx, by] = [x(v.parent), y(v.parent), x(v.version), y(v.version)];
      const lift = 10 * (v.version - v.parent);
      svg.append(el("path", { d: `M ${ax} ${ay} Q ${(ax + bx) / 2} ${Math.min(ay, by) - lift} ${bx} ${by}`,
                              fill: "none", stroke: COLORS[v.kind] || "#999" }));
    }
    svg.append(el("circle", { cx: x(v.version), cy: y(v.version), r: 3.5, fill: COLORS[v.kind] || "#999" }));
  }
}

/** Cumulative epsilon per published version, and the budget as a dashed line; versions without a
 * finite epsilon (no DP noise) are listed under the chart instead. */
function drawEpsilon(svg, versions, privacy) {
  const points = versions.filter((v) => v.epsilon !== null && v.epsilon !== undefined);
  const note = document.getElementById("epsilon-note");
  const infinite = versions.filter((v) => v.mode === "off").map((v) => v.version);
  note.textContent = infinite.length ? `ε is infinite (rounds without noise) from version ${infinite[0]} on.` : "";
  if (!points.length) return empty(svg, privacy?.mode === "off" ? "no DP: ε is infinite" : "no private versions yet");
  const budget = Number.isFinite(privacy?.budget) ? privacy.budget : null;
  const ys = points.map((v) => v.epsilon).concat(budget === null ? [] : [budget]);
  const { x, y } = axes(svg, points.map((v) => v.version), ys, "version");
  if (budget !== null) {
    svg.append(el("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(budget), y2: y(budget), stroke: COLORS.budget,
                            "stroke-dasharray": "4 3" }));
  }
  const path = points.map((v) => `${x(v.version).toFixed(1)},${y(v.epsilon).toFixed(1)}`).join(" ");
  svg.append(el("polyline", { points: path, fill: "none", stroke: COLORS.epsilon, "stroke-width": 2 }));
  for (const v of points) svg.append(el("circle", { cx: x(v.version), cy: y(v.epsilon), r: 2.5, fill: COLORS.epsilon }));
}

/** The privacy card and sentence: mode, z, C, delta, budget, and whether training goes on. */
function renderPrivacy(privacy, training) {
  const epsilon = privacy.epsilon === null ? "∞" : privacy.epsilon.toFixed(2);
  document.getElementById("epsilon").textContent = epsilon;
  document.getElementById("privacy").textContent = privacy.mode === "off"
    ? "Differential privacy is off (DP_NOISE_MULTIPLIER = 0): nothing bounds what a version reveals, ε is infinite."
    : `Differential privacy: ${privacy.mode} noise (DP-FedAvg), noise multiplier z = ${privacy.noise_multiplier}, `
      + `clip C = ${privacy.clip}, δ = ${privacy.delta}, budget ε ≤ ${privacy.budget}; cohort ${privacy.cohort_size} `
      + `drawn from at least ${privacy.population}; ${privacy.rounds} round(s) accounted.`;
  document.getElementById("training").textContent = training.open ? "Training is open." : `Training has stopped: ${training.message}`;
}

/** Draw each chart's legend: a colour key and what it stands for. */
function drawLegends() {
  for (const [id, entries] of Object.entries(LEGENDS)) {
    document.getElementById(id).replaceChildren(...entries.map(([color, text]) => {
      const key = Object.assign(document.createElement("span"), { className: "key" });
      key.style.background = color;
      const item = document.createElement("li");
      item.append(key, text);
      return item;
    }));
  }
}

/** Replace a table body's rows; with none, one row that says so. */
function fillTable(id, rows, emptyText) {
  const body = document.querySelector(`#${id} tbody`);
  if (!rows.length) {
    const cell = Object.assign(document.createElement("td"), { className: "empty", textContent: emptyText,
                                                                colSpan: document.querySelectorAll(`#${id} th`).length });
    body.replaceChildren(document.createElement("tr"));
    body.firstChild.append(cell);
    return;
  }
  body.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    for (const cell of cells) tr.append(Object.assign(document.createElement("td"), { textContent: String(cell ?? "–") }));
    return tr;
  }));
}

/** Render one /api/status document. */
function render(status) {
  const refused = Object.values(status.rejected).reduce((a, b) => a + b, 0);
  document.getElementById("version").textContent = status.version;
  document.getElementById("round").textContent = status.round.id;
  const secure = status.round.secure; // a secure round reports its phase's counts, never an update
  document.getElementById("progress").textContent = secure
    ? `${status.round.phase}: ${secure.advertised} keys, ${secure.masked} masked of ${secure.cohort}`
    : `${status.round.updates} / ${status.round.min_clients}`;
  document.getElementById("aggregation").textContent = status.aggregation;
  document.getElementById("accepted").textContent = status.accepted;
  document.getElementById("refused").textContent = refused;
  drawLoss(document.getElementById("loss-chart"), status.rounds);
  drawClients(document.getElementById("clients-chart"), status.rounds);
  drawVersions(document.getElementById("versions-chart"), status.versions);
  drawEpsilon(document.getElementById("epsilon-chart"), status.versions, status.privacy);
  renderPrivacy(status.privacy, status.training);
  fillTable("refusals", Object.entries(status.rejected), "No refused requests.");
  const unpublished = status.rounds.filter((r) => r.status === "refused" || r.status === "abandoned");
  fillTable("unpublished", unpublished.reverse().map((r) => [r.id, r.status, r.detail]), "Every closed round was published.");
  const bound = status.influence.clip_bound;
  document.getElementById("gate").textContent = `Publish gate: ${status.gate}. Phase: ${status.round.phase}` +
    (bound === undefined ? "." : ` · last clip bound ${bound.toFixed(3)} (${status.influence.clipped} clipped, ${status.influence.capped} weights capped).`);
  fillTable("versions", status.versions.slice().reverse().map((v) => [v.version, v.parent, v.kind, v.round, v.created]),
            "No versions yet.");
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()} · optimizer ${status.optimizer}`;
}

/** Fetch and render, then schedule the next refresh. */
async function refresh() {
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
  } catch (error) {
    document.getElementById("updated").textContent = `could not load /api/status: ${error.message}`;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

drawLegends();
refresh();
