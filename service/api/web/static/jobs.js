// "/": the jobs list (polled while any job is active) and the submit form.

import { API, ApiError, getJSON, getOptional, KEY_EVENT, request } from "./api.js";
import { askForKey, hideAlert, poller, reportError, setupApiKey } from "./common.js";
import { byId, h, replace } from "./dom.js";
import { age, dateTime, isNumber, modelName, percent, score, shortId, TERMINAL } from "./format.js";

const ACTIVE_POLL_MS = 3000;
const IDLE_POLL_MS = 15000;

const list = {
  jobs: new Map(), // id → job, newest first by created_at
  nextCursor: null,
  status: "",
  selected: new Map(), // id → model of the jobs ticked for comparison, in the order ticked
};

// At most as many as GET /v1/compare takes (service.api.schemas.MAX_COMPARED_JOBS).
const MAX_COMPARED = 8;

// --- jobs list -----------------------------------------------------------------------------------

function jobsUrl(cursor) {
  const params = new URLSearchParams();
  if (list.status) params.set("status", list.status);
  if (cursor) params.set("cursor", cursor);
  const query = params.toString();
  return `${API}/jobs${query ? `?${query}` : ""}`;
}

function statusBadge(status) {
  return h("span", { class: "badge", dataset: { status } }, status);
}

function progressCell(job) {
  const p = job.progress;
  const done = p.trials_completed + p.trials_failed;
  return h(
    "div",
    { class: "progress-cell" },
    h("progress", { max: "1", value: String(p.fraction || 0), "aria-label": `Job ${shortId(job.id)} progress` }),
    h("span", { class: "muted" }, `${done}/${p.trials_total}`),
  );
}

function row(job) {
  const target = job.spec && job.spec.target ? job.spec.target.param_ratio : null;
  const best = job.best && isNumber(job.best.score) ? score(job.best.score) : "—";
  return h(
    "tr",
    { dataset: { jobId: job.id, status: job.status } },
    h("td", { class: "select" }, selectBox(job)),
    h("th", { scope: "row" }, h("a", { href: `/jobs/${encodeURIComponent(job.id)}`, title: job.id }, h("code", {}, shortId(job.id)))),
    h("td", {}, statusBadge(job.status)),
    h("td", { title: job.model, class: "model" }, modelName(job.model)),
    h("td", { class: "num" }, isNumber(target) ? percent(target, 0) : "—"),
    h("td", {}, progressCell(job)),
    h("td", { class: "num" }, best),
    h("td", { title: dateTime(job.created_at) }, age(job.created_at)),
  );
}

// --- choosing jobs to compare -------------------------------------------------------------------

function selectBox(job) {
  const chosen = list.selected.has(job.id);
  const full = list.selected.size >= MAX_COMPARED && !chosen;
  return h("input", {
    type: "checkbox",
    class: "compare-box",
    checked: chosen,
    disabled: full,
    "aria-label": `Compare job ${shortId(job.id)}`,
    onchange: (event) => {
      if (event.target.checked) list.selected.set(job.id, job.model);
      else list.selected.delete(job.id);
      renderCompare(); // not the whole table: the box keeps the keyboard focus
    },
  });
}

function renderCompare() {
  const models = new Set(list.selected.values());
  const button = byId("compare-selected");
  const hint = byId("compare-hint");
  for (const box of document.querySelectorAll(".compare-box")) box.disabled = list.selected.size >= MAX_COMPARED && !box.checked;
  button.disabled = list.selected.size < 2 || models.size > 1;
  button.textContent = list.selected.size >= 2 ? `Compare ${list.selected.size} jobs` : "Compare selected";
  if (models.size > 1) hint.textContent = "These jobs prune different models: tick jobs of one model.";
  else if (list.selected.size < 2) hint.textContent = "Tick two or more jobs of one model to compare them.";
  else hint.textContent = `Model ${modelName([...models][0])}.`;
}

function openComparison() {
  if (list.selected.size >= 2) window.location.assign(`/compare?jobs=${[...list.selected.keys()].map(encodeURIComponent).join(",")}`);
}

function renderJobs() {
  const jobs = [...list.jobs.values()].sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at) || (a.id < b.id ? 1 : -1));
  replace(byId("jobs-body"), jobs.map(row));
  byId("jobs-empty").hidden = jobs.length > 0;
  byId("jobs-empty").textContent = list.status ? `No ${list.status} jobs.` : "No jobs yet. Submit one with the form.";
  byId("jobs-more").hidden = !list.nextCursor;
  byId("jobs-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  renderCompare();
  return jobs;
}

async function refresh() {
  try {
    const page = await getJSON(jobsUrl(null));
    const firstPage = new Map(page.items.map((job) => [job.id, job]));
    // Keep older pages loaded with "Load more"; replace the newest page with what the server says now.
    const older = [...list.jobs.values()].filter((job) => !firstPage.has(job.id) && list.loadedMore);
    list.jobs = new Map([...firstPage, ...older.map((job) => [job.id, job])]);
    if (!list.loadedMore) list.nextCursor = page.next_cursor;
    hideAlert();
    const jobs = renderJobs();
    return jobs.some((job) => !TERMINAL.has(job.status)) ? ACTIVE_POLL_MS : IDLE_POLL_MS;
  } catch (error) {
    reportError(error, "Could not load the jobs");
    return error instanceof ApiError && error.needsKey ? null : IDLE_POLL_MS;
  }
}

async function loadMore() {
  const button = byId("jobs-more");
  button.disabled = true;
  try {
    const page = await getJSON(jobsUrl(list.nextCursor));
    for (const job of page.items) list.jobs.set(job.id, job);
    list.nextCursor = page.next_cursor;
    list.loadedMore = true;
    renderJobs();
  } catch (error) {
    reportError(error, "Could not load more jobs");
  } finally {
    button.disabled = false;
  }
}

// --- submit form ---------------------------------------------------------------------------------

const form = byId("job-form");
let idempotencyKey = null; // kept while the form is unchanged, so a retried submit cannot create twice

function newKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function setPath(target, path, value) {
  const keys = path.split(".");
  let node = target;
  for (const key of keys.slice(0, -1)) node = node[key] ??= {};
  node[keys[keys.length - 1]] = value;
}

/** The request body: only fields the user filled in, so the server's defaults apply to the rest. */
function formBody() {
  const body = {};
  for (const input of form.querySelectorAll("input[name], select[name]")) {
    if (input.name === "objectives") {
      if (input.checked) body.objectives = input.value.split(",");
      continue;
    }
    const raw = input.value.trim();
    if (raw === "") continue;
    setPath(body, input.name, input.type === "number" ? Number(raw) : raw);
  }
  return body;
}

function fieldFor(loc) {
  const path = loc.filter((part) => part !== "body").join(".");
  for (let parts = path.split("."); parts.length; parts.pop()) {
    const input = form.querySelector(`[name="${CSS.escape(parts.join("."))}"]`);
    if (input) return input;
  }
  return null;
}

function clearErrors() {
  const alert = byId("form-alert");
  alert.hidden = true;
  alert.textContent = "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  for (const message of form.querySelectorAll(".field-error")) {
    message.hidden = true;
    message.textContent = "";
  }
}

function fieldError(input, message) {
  input.setAttribute("aria-invalid", "true");
  const box = document.getElementById(`${input.id}-error`);
  if (box) {
    box.textContent = message;
    box.hidden = false;
  }
  const advanced = input.closest("details");
  if (advanced) advanced.open = true;
}

function showFormError(summary, fieldErrors = []) {
  const alert = byId("form-alert");
  const items = fieldErrors.filter((e) => !e.input);
  replace(alert, h("p", {}, summary), items.length ? h("ul", {}, items.map((e) => h("li", {}, e.text))) : null);
  alert.hidden = false;
  alert.focus();
}

function checkLocally() {
  const problems = [];
  for (const input of form.querySelectorAll("input[name], select[name]")) {
    if (!input.checkValidity()) {
      const label = form.querySelector(`label[for="${input.id}"]`);
      problems.push({ input, text: `${label ? label.textContent.trim() : input.name}: ${input.validationMessage}` });
      fieldError(input, input.validationMessage);
    }
  }
  return problems;
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  const local = checkLocally();
  if (local.length) {
    showFormError(`Please fix ${local.length === 1 ? "this field" : `these ${local.length} fields`}:`, local.map((p) => ({ text: p.text })));
    local[0].input.focus();
    return;
  }
  const button = byId("submit-job");
  const status = byId("submit-status");
  button.disabled = true;
  status.textContent = "Submitting…";
  idempotencyKey ??= newKey();
  try {
    const { data } = await request(`${API}/jobs`, {
      method: "POST",
      body: formBody(),
      headers: { "Idempotency-Key": idempotencyKey },
    });
    status.textContent = `Job ${shortId(data.id)} submitted; opening it…`;
    idempotencyKey = null;
    window.location.assign(`/jobs/${encodeURIComponent(data.id)}`);
  } catch (error) {
    status.textContent = "";
    const errors = (error.problem && Array.isArray(error.problem.errors) ? error.problem.errors : []).map((e) => {
      const input = fieldFor(e.loc || []);
      if (input) fieldError(input, e.msg);
      return { input, text: `${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}` };
    });
    showFormError(`The job was not submitted. ${error.message}`, errors);
    if (error.needsKey) askForKey();
  } finally {
    button.disabled = false;
  }
}

async function discoverSpecFields() {
  // Show the multi-objective switch only when this server's JobSpec has "objectives".
  try {
    const schema = await getOptional("/openapi.json");
    const spec = schema && schema.components && schema.components.schemas && schema.components.schemas.JobSpec;
    if (spec && spec.properties && spec.properties.objectives) byId("objectives-field").hidden = false;
  } catch {
    // Without the schema the form keeps the common fields.
  }
}

async function discoverOptions() {
  // The names a spec accepts come from the server (GET /v1/options reads search.names), so the
  // form never offers a proxy or sampler the server would refuse, nor misses a new one.
  let options;
  try {
    options = await getOptional(`${API}/options`);
  } catch {
    return; // without a key the form still submits "default"; the API names what it accepts
  }
  if (!options) return;
  const proxies = byId("proxy-names");
  replace(proxies, ...options.proxies.map((name) => h("option", { value: name })));
  byId("f-proxy").placeholder = options.defaults.proxy;
  const samplers = byId("f-sampler");
  replace(
    samplers,
    h("option", { value: "" }, `default (${options.defaults.sampler})`),
    ...options.samplers.map((name) => h("option", { value: name }, name)),
  );
  if (options.export_formats) {
    replace(
      byId("f-export-format"),
      h("option", { value: "" }, `default (${options.defaults.export_format})`),
      ...options.export_formats.map((name) => h("option", { value: name }, name)),
    );
  }
}

// --- start ---------------------------------------------------------------------------------------

setupApiKey();
form.addEventListener("submit", submit);
form.addEventListener("input", () => {
  idempotencyKey = null;
});
byId("jobs-more").addEventListener("click", loadMore);
byId("compare-selected").addEventListener("click", openComparison);
byId("status-filter").addEventListener("change", (event) => {
  list.status = event.target.value;
  list.jobs = new Map();
  list.nextCursor = null;
  list.loadedMore = false;
  polling.restart();
});

const polling = poller(refresh, ACTIVE_POLL_MS);
polling.now();
window.addEventListener(KEY_EVENT, () => {
  polling.restart();
  discoverOptions();
});
discoverSpecFields();
discoverOptions();

