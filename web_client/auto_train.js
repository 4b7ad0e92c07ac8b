/**
 * When the page trains by itself. Like Gboard's federated learning, which trains only while the
 * phone is idle, charging and on an unmetered network (Hard et al. 2018, "Federated Learning for
 * Mobile Keyboard Prediction", section 4): after `train_after_urls` new visits, while the page is
 * visible, once nobody has typed or clicked for `train_idle_ms`, on a charger where the Battery
 * Status API says so and off metered connections where the Network Information API says so.
 * An API the browser lacks holds nothing back. "Train now" skips all of this.
 *
 * Emits "plan" ({detail: {text, soon}}): what the page will do and when, in words.
 */

import { TRAIN_CHECK_MS } from "./constants.js";

/** Why the connection counts as metered, or null (Network Information API, where present). */
function meteredReason(connection) {
  if (connection?.saveData) return "Data Saver is on";
  if (connection?.type === "cellular") return "this device is on mobile data";
  return null;
}

export class AutoTrain extends EventTarget {
  /**
   * @param {import("./client.js").Client} client
   * @param {{train_after_urls: number, train_idle_ms: number}} config
   * @param {{charging: boolean, addEventListener: Function}|null} battery navigator.getBattery()'s, if any
   */
  constructor(client, config, battery) {
    super();
    this.client = client;
    this.config = config;
    this.battery = battery;
    this.connection = /** @type {any} */ (navigator).connection ?? null;
    this.lastActivity = performance.now();
    this.failedAtNewUrls = null; // a run that failed waits for the history to change
  }

  /** Start checking every TRAIN_CHECK_MS and whenever charging or the connection changes. */
  static async start(client, config) {
    const battery = await /** @type {any} */ (navigator).getBattery?.().catch(() => null) ?? null;
    const auto = new AutoTrain(client, config, battery);
    battery?.addEventListener("chargingchange", () => auto.check());
    auto.connection?.addEventListener?.("change", () => auto.check());
    client.addEventListener("change", () => auto.check());
    setInterval(() => auto.check(), TRAIN_CHECK_MS);
    auto.check();
    return auto;
  }

  /** Someone typed or clicked: the idle wait starts again. */
  noteActivity() {
    this.lastActivity = performance.now();
  }

  /** What still holds training back, in words, or null when nothing does (the idle wait aside). */
  blocker() {
    const { state } = this.client;
    const wanted = this.config.train_after_urls;
    if (state.version === null || !state.trainReady) return "Getting the model ready for training…";
    if (state.newUrls < wanted) {
      return `Trains by itself after ${wanted} new visits (${state.newUrls} so far): while this page is `
        + `open, ${Math.round(this.config.train_idle_ms / 1000)} s after you stop typing, on a charger and off mobile data.`;
    }
    if (this.failedAtNewUrls === state.newUrls) return "The last training run failed; it tries again after your next visit.";
    if (document.visibilityState !== "visible") return "Will train when this page is visible again.";
    if (this.battery && !this.battery.charging) return "Will train once this device is charging (training uses the battery).";
    const metered = meteredReason(this.connection);
    if (metered) return `Will train off metered connections: ${metered}.`;
    return null;
  }

  /** Say what happens next; train when nothing holds it back and the page has been idle long enough. */
  check() {
    const { state } = this.client;
    if (state.stopped) return this.say("Training has stopped for privacy; suggestions keep working.", false);
    if (this.config.train_after_urls <= 0) return this.say("Trains only when you press “Train now”.", false);
    if (state.training) return this.say("Training on your visits now; suggestions keep working meanwhile.", true);
    const blocker = this.blocker();
    if (blocker) return this.say(blocker, false);
    const waitMs = this.config.train_idle_ms - (performance.now() - this.lastActivity);
    if (waitMs > 0) return this.say(`Trains on your ${state.newUrls} new visits in ${Math.ceil(waitMs / 1000)} s, unless you keep typing.`, true);
    this.run();
  }

  async run() {
    const before = this.client.state.newUrls;
    await this.client.train();
    this.failedAtNewUrls = this.client.state.newUrls === before ? before : null;
  }

  say(text, soon) {
    if (text === this.text) return;
    this.text = text;
    this.dispatchEvent(new CustomEvent("plan", { detail: { text, soon } }));
  }
}
