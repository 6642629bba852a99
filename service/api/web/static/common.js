// What every page has: the API-key box in the header and the page-level alert.

import { getApiKey, KEY_EVENT, setApiKey } from "./api.js";
import { byId } from "./dom.js";

export function setupApiKey() {
  const details = byId("api-key");
  const form = byId("api-key-form");
  const input = byId("api-key-input");
  const state = byId("api-key-state");
  const show = () => {
    state.textContent = getApiKey() ? "set" : "not set";
  };
  show();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    try {
      setApiKey(input.value);
      input.value = "";
      details.open = false;
      hideAlert();
    } catch (error) {
      showAlert(error.message);
    }
  });
  byId("api-key-clear").addEventListener("click", () => {
    setApiKey("");
    input.value = "";
  });
  window.addEventListener(KEY_EVENT, show);
  window.addEventListener("storage", show); // another tab changed it
}

/** Open the API-key box and put the cursor in it. */
export function askForKey() {
  const details = byId("api-key");
  details.open = true;
  byId("api-key-input").focus();
}

export function showAlert(message, { kind = "error" } = {}) {
  const alert = byId("page-alert");
  alert.textContent = message;
  alert.dataset.kind = kind;
  alert.hidden = false;
}

export function hideAlert() {
  const alert = byId("page-alert");
  alert.hidden = true;
  alert.textContent = "";
}

/** Show an API error at page level; a missing key also opens the key box. */
export function reportError(error, prefix = "") {
  const message = error && error.message ? error.message : String(error);
  showAlert(prefix ? `${prefix}: ${message}` : message);
  if (error && error.needsKey) askForKey();
}

/** Run fn every `interval` ms while the page is visible; fn returns the next delay or null to stop. */
export function poller(fn, interval) {
  let timer = null;
  let stopped = false;
  let running = false;
  const schedule = (delay) => {
    clearTimeout(timer);
    if (!stopped && !document.hidden) timer = setTimeout(tick, delay);
  };
  async function tick() {
    if (running || stopped) return;
    running = true;
    let next = interval;
    try {
      next = await fn();
    } catch (error) {
      console.error(error); // fn reports its own errors; never let one stop the polling
    } finally {
      running = false;
    }
    if (next === null) stopped = true;
    else schedule(next ?? interval);
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && !stopped) schedule(0);
  });
  return {
    now: () => {
      if (!stopped) schedule(0);
    },
    restart: () => {
      stopped = false;
      schedule(0);
    },
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
    get stopped() {
      return stopped;
    },
  };
}
