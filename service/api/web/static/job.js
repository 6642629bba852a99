// /jobs/{id}: polls the job and its trials, draws progress, the best architecture, the scatter and
// the trials table, and stops polling when the job has ended.

import { ApiError, fetchBlob, getApiKey, getOptional, getPolled, jobPath, KEY_EVENT, request } from "./api.js";
import { denseScale, drawArch } from "./arch.js";
import { hideAlert, poller, reportError, setupApiKey } from "./common.js";
import { byId, h, replace, saveBlob } from "./dom.js";
import {
  age,
  compact,
  dateTime,
  duration,
  integer,
  isNumber,
  percent,
  plural,
  score,
  TERMINAL,
} from "./format.js";
import { paretoFront, paretoNumbers, trialScore } from "./pareto.js";
import { drawScatter } from "./plot.js";
import { renderReport } from "./report.js";
import { SortablePagedTable } from "./table.js";

const POLL_MS = 2000;
const MAX_BACKOFF_MS = 30000;
const PAGE_LIMIT = 200;
const RESUMABLE = new Set(["cancelled", "failed"]);

const jobId = document.body.dataset.jobId;
const base = jobPath(jobId);

const state = {
  job: null,
  trials: new Map(), // number → trial
  cursors: [null], // cursor of each page of trials fetched so far; the last page may still grow
  pageLimit: PAGE_LIMIT,
  serverFront: null, // Set of numbers from GET /pareto, or null
  paretoSupported: true,
  report: null,
  artifacts: null,
  model: undefined, // the dense model's widths from GET /model, fetched once; null when the server cannot say
  finished: false,
  failures: 0,
};

// --- fetching ------------------------------------------------------------------------------------

async function fetchTrialPage(cursor) {
  const params = new URLSearchParams();
  if (state.pageLimit) params.set("limit", String(state.pageLimit));
  if (cursor) params.set("cursor", cursor);
  try {
    return await getPolled(`${base}/trials?${params}`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 400 && state.pageLimit) {
      state.pageLimit = null; // this server's pages are smaller: use its default size
      return fetchTrialPage(cursor);
    }
    throw error;
  }
}

/** Fetch new trials: re-read the last (possibly partial) page and follow the cursors from there. */
async function fetchTrials({ all = false } = {}) {
  if (all) state.cursors = [null];
  let index = state.cursors.length - 1;
  for (;;) {
    const page = await fetchTrialPage(state.cursors[index]);
    for (const trial of page.items) state.trials.set(trial.number, trial);
    if (!page.next_cursor) break;
    index += 1;
    state.cursors[index] = page.next_cursor;
    state.cursors.length = index + 1;
  }
}

/** An optional section's data: null when the server has no such route or nothing for this job. */
async function optional(path) {
  try {
    return await getOptional(path);
  } catch (error) {
    if (error instanceof ApiError && error.status >= 400 && error.status < 500 && !error.needsKey && error.status !== 403) {
      return null; // e.g. 409 "no report yet": hide the section rather than alarm the user
    }
    throw error;
  }
}

async function fetchExtras() {
  const [pareto, report, artifacts, model] = await Promise.all([
    state.paretoSupported ? optional(`${base}/pareto`) : null,
    state.finished ? optional(`${base}/report`) : null,
    state.finished ? optional(`${base}/artifacts`) : null,
    state.model === undefined ? optional(`${base}/model`) : state.model,
  ]);
  state.model = model;
  if (state.paretoSupported) {
    state.serverFront = paretoNumbers(pareto);
    if (pareto === null) state.paretoSupported = false;
  }
  if (state.finished) {
    state.report = report;
    state.artifacts = artifacts;
  }
}

async function tick() {
  try {
    const job = await getPolled(base);
    const ended = TERMINAL.has(job.status);
    state.job = job;
    // The last poll re-reads every trial: verification fills in rows written earlier.
    await fetchTrials({ all: ended });
    state.finished = ended;
    await fetchExtras();
    state.failures = 0;
    hideAlert();
    render();
    byId("poll-status").textContent = ended
      ? `Job ${job.status}; updates stopped.`
      : `Updated ${new Date().toLocaleTimeString()}; refreshing every ${POLL_MS / 1000} s.`;
    return ended ? null : POLL_MS;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404 && !state.job) {
      showNotFound();
      return null;
    }
    reportError(error, "Could not update the job");
    if (error instanceof ApiError && error.needsKey) return null; // resumes when a key is saved
    state.failures += 1;
    const delay = Math.min(MAX_BACKOFF_MS, POLL_MS * 2 ** state.failures);
    byId("poll-status").textContent = `Retrying in ${Math.round(delay / 1000)} s.`;
    return delay;
  }
}

// --- rendering -----------------------------------------------------------------------------------

function showNotFound() {
  byId("job-loading").hidden = false;
  replace(
    byId("job-loading"),
    `There is no job ${jobId} on this server (or your API key cannot see it). `,
    h("a", { href: "/" }, "Back to all jobs"),
  );
  setStatus("not found");
}

function setStatus(status) {
  const badge = byId("job-status");
  badge.textContent = status;
  badge.dataset.status = status;
}

function objectives() {
  const spec = (state.job && state.job.spec) || {};
  return Array.isArray(spec.objectives) ? spec.objectives : null;
}

function render() {
  const job = state.job;
  byId("job-loading").hidden = true;
  byId("job-body").hidden = false;
  setStatus(job.status);
  document.title = `Job ${job.id} (${job.status}) · PruneSearch`;
  renderSummary(job);
  renderProgress(job);
  renderBest(job);
  const trials = [...state.trials.values()].sort((a, b) => a.number - b.number);
  renderPlot(job, trials);
  trialsTable.setRows(trials);
  byId("trials-count").textContent = plural(trials.length, "trial");
  renderActions(job);
  renderReportSection();
  renderArtifacts();
}

function summaryItems(list, items) {
  replace(list, items.filter(([, value]) => value !== null && value !== undefined && value !== "").map(([term, value, title]) => [
    h("dt", {}, term),
    h("dd", title ? { title } : {}, value),
  ]));
}

function latencySetting(setting) {
  if (!setting || typeof setting !== "object") return "";
  const what = setting.phase === "prefill" ? `prefill, batch ${setting.batch} × ${setting.context} tokens` : `decode, batch ${setting.batch}, context ${setting.context}`;
  return ` (${what})`;
}

function renderSummary(job) {
  const spec = job.spec || {};
  const target = spec.target || {};
  const finished = job.finished_at && job.started_at ? (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000 : null;
  summaryItems(byId("job-summary"), [
    ["Model", h("code", {}, job.model)],
    ["Target", isNumber(target.param_ratio) ? `${percent(target.param_ratio, 0)} of the parameters` : null],
    ["Latency target", isNumber(target.latency_ratio) ? `${percent(target.latency_ratio, 0)} of the dense model's time per step${latencySetting(target.latency)}` : null],
    ["Trials", integer(spec.n_trials)],
    ["Proxy", spec.proxy],
    ["Sampler", spec.sampler],
    ["Objectives", objectives() ? objectives().join(", ") : null],
    ["Submitted", age(job.created_at), dateTime(job.created_at)],
    ["Ran for", isNumber(finished) ? duration(finished) : null],
  ]);
}

/** The ETA is as of the job's last change (updated_at), so an unchanged job reads the same: count down from it. */
function etaNow(job) {
  const since = (Date.now() - Date.parse(job.updated_at)) / 1000;
  return Math.max(0, job.progress.eta_seconds - (Number.isFinite(since) ? Math.max(0, since) : 0));
}

function renderProgress(job) {
  const p = job.progress;
  const bar = byId("job-progress");
  bar.value = isNumber(p.fraction) ? p.fraction : 0;
  const parts = [`${p.trials_completed} of ${p.trials_total} trials done (${percent(p.fraction, 0)})`];
  if (p.trials_failed) parts.push(`${p.trials_failed} failed`);
  const phase = p.phase;
  if (phase && phase.name === "recovery" && job.status === "running") parts.push(`recovery: ${phase.done} of ${phase.total} steps`);
  if (job.status === "running" && isNumber(p.eta_seconds)) parts.push(`about ${duration(etaNow(job))} left`);
  if (job.status === "queued") parts.push("waiting for a worker");
  if (job.status === "running" && job.cancel_requested) parts.push("cancel requested: stopping after the current trial");
  if (job.status === "cancelled") parts.push("cancelled");
  byId("progress-text").textContent = parts.join(" · ");
  const errorBox = byId("job-error");
  errorBox.hidden = !job.error;
  errorBox.textContent = job.error ? `The job failed: ${job.error}` : "";
}

function renderBest(job) {
  const best = job.best;
  byId("best-heading").textContent = TERMINAL.has(job.status) ? "Best architecture" : "Best architecture so far";
  byId("best-empty").hidden = Boolean(best);
  byId("best-body").hidden = !best;
  if (!best) return;
  const verified = best.verified || null;
  const otherScores = Object.entries(best.scores || {})
    .filter(([, v]) => isNumber(v))
    .map(([k, v]) => `${k} ${score(v)}`)
    .join(", ");
  summaryItems(byId("best-summary"), [
    ["Trial", `#${best.trial_number}${best.origin ? ` (${best.origin})` : ""}`],
    ["Score", score(best.score)],
    ["Parameters", isNumber(best.param_count) ? `${compact(best.param_count)} (${percent(best.param_ratio, 2)})` : null, integer(best.param_count)],
    ["Proxy scores", otherScores || null],
    ["KL to dense", verified && isNumber(verified.kl) ? `${score(verified.kl)} nats/token` : null],
    ["Perplexity", verified && isNumber(verified.ppl) ? score(verified.ppl) : null],
    ["Verified on", verified && isNumber(verified.tokens) ? `${integer(verified.tokens)} held-out tokens` : null],
  ]);
  const archs = [best.arch, ...[...state.trials.values()].map((t) => t.arch)];
  drawArch(byId("arch-body"), best.arch, denseScale(state.model, archs), {
    sparsityHead: byId("arch-sparsity-head"),
    note: byId("arch-scale-note"),
  });
}

// A latency Pareto search (objectives ["score", "latency"]) plots the predicted latency per step.
function latencyAxis() {
  const objs = objectives();
  return Array.isArray(objs) && objs.includes("latency");
}

function plotPoints(trials) {
  const objs = objectives();
  const x = latencyAxis() ? (t) => t.latency_ms : (t) => t.param_ratio;
  return trials
    .filter((t) => t.state === "complete" && isNumber(x(t)) && isNumber(trialScore(t, objs)))
    .map((t) => ({ number: t.number, x: x(t), y: trialScore(t, objs), label: t.origin }));
}

function currentFront(points) {
  return state.serverFront || new Set(paretoFront(points).map((p) => p.number));
}

function renderPlot(job, trials) {
  const points = plotPoints(trials);
  const front = currentFront(points);
  const spec = job.spec || {};
  const proxy = spec.proxy ? `${spec.proxy} score` : "score";
  const best = job.best && Number.isInteger(job.best.trial_number) ? job.best.trial_number : null;
  const latency = latencyAxis();
  const axis = latency ? { xLabel: "predicted ms per step", xPercent: false } : {};
  const target = latency ? null : spec.target && spec.target.param_ratio;
  drawScatter(byId("plot"), { points, front, best, target, yLabel: proxy, ...axis });
  const hidden = trials.length - points.length;
  const onFront = points.filter((p) => front.has(p.number)).length;
  replace(
    byId("plot-caption"),
    h("span", { class: "legend-item" }, h("span", { class: "swatch point" }), `${plural(points.length, "trial")}`),
    h("span", { class: "legend-item" }, h("span", { class: "swatch pareto" }), `${onFront} on the Pareto front ${state.serverFront ? "(from the server)" : latency ? "(higher score, lower latency)" : "(higher score, fewer parameters)"}`),
    best !== null ? h("span", { class: "legend-item" }, h("span", { class: "swatch best" }), `best: trial ${best}`) : null,
    target !== null && target !== undefined ? h("span", { class: "legend-item" }, h("span", { class: "swatch target" }), "target") : null,
    hidden > 0 ? h("span", { class: "legend-item" }, `${hidden} running or failed not shown`) : null,
  );
  state.lastPlot = { points, front, best, target, yLabel: proxy, ...axis };
}

function renderActions(job) {
  const cancel = byId("cancel-job");
  cancel.hidden = TERMINAL.has(job.status);
  cancel.disabled = Boolean(job.cancel_requested);
  cancel.textContent = job.cancel_requested ? "Cancel requested" : "Cancel job";
  byId("resume-job").hidden = !RESUMABLE.has(job.status);
}

function renderReportSection() {
  const section = byId("report-section");
  section.hidden = !state.report;
  if (!state.report) return;
  const bestNumber = state.job.best ? state.job.best.trial_number : null;
  replace(byId("report-body"), renderReport(state.report, { trials: state.trials, bestNumber }));
}

function artifactItems(body) {
  if (!body) return [];
  const items = Array.isArray(body) ? body : body.items || [];
  return items.filter((item) => item && typeof item === "object" && item.name);
}

function downloadLink(url, name, text) {
  return h("a", { href: url, download: name, class: "button secondary", onclick: (event) => downloadArtifact(event, url, name) }, text);
}

function renderArtifacts() {
  const items = artifactItems(state.artifacts);
  byId("artifacts-section").hidden = items.length === 0;
  replace(
    byId("artifacts-list"),
    items.map((item) => {
      const files = Array.isArray(item.files) ? item.files : [];
      const size = isNumber(item.size) ? `${compact(item.size)}B` : "";
      if (item.status === "pending") {
        return h("li", { dataset: { artifact: item.name } }, h("strong", {}, item.name), h("span", { class: "muted" }, ` exporting… ${size}`));
      }
      return h(
        "li",
        { dataset: { artifact: item.name } },
        item.archive_url ? downloadLink(item.archive_url, `${item.name}.tar`, `Download ${item.name} (tar, ${size})`) : h("strong", {}, item.name),
        files.length
          ? h(
              "details",
              { class: "files" },
              h("summary", {}, `${plural(files.length, "file")}`),
              h("ul", {}, files.map((file) => h("li", {}, downloadLink(file.url, file.path.split("/").pop(), file.path), h("span", { class: "muted" }, ` ${compact(file.size)}B`)))),
            )
          : null,
      );
    }),
  );
}

async function downloadArtifact(event, url, name) {
  if (!getApiKey()) return; // a plain link streams large files; it needs no header
  event.preventDefault();
  try {
    saveBlob(await fetchBlob(url), name);
  } catch (error) {
    reportError(error, `Could not download ${name}`);
  }
}

// --- trials table --------------------------------------------------------------------------------

const trialsTable = new SortablePagedTable({
  head: byId("trials-head"),
  body: byId("trials-body"),
  prev: byId("trials-prev"),
  next: byId("trials-next"),
  pageLabel: byId("trials-page"),
  pageSize: 10,
  sortKey: "number",
  rowKey: (t) => t.number,
  columns: [
    { key: "number", label: "#", numeric: true, header: true, value: (t) => t.number, render: (t) => String(t.number) },
    { key: "state", label: "State", value: (t) => t.state, render: (t) => h("span", { class: "badge", dataset: { status: t.state } }, t.state) },
    { key: "origin", label: "Origin", value: (t) => t.origin, render: (t) => t.origin },
    { key: "score", label: "Score", numeric: true, descendingFirst: true, value: (t) => trialScore(t, objectives()), render: (t) => score(trialScore(t, objectives())) },
    // Calibration tokens that scored the trial (the token schedule); "—": all of them, or a proxy that counts none.
    { key: "tokens", label: "Tokens", numeric: true, value: (t) => t.tokens, render: (t) => integer(t.tokens) },
    { key: "param_ratio", label: "Params", numeric: true, value: (t) => t.param_ratio, render: (t) => percent(t.param_ratio, 2) },
    { key: "kl", label: "KL", numeric: true, value: (t) => t.verified && t.verified.kl, render: (t) => (t.verified ? score(t.verified.kl) : "—") },
    { key: "ppl", label: "PPL", numeric: true, value: (t) => t.verified && t.verified.ppl, render: (t) => (t.verified ? score(t.verified.ppl) : "—") },
    { key: "pareto", label: "Pareto", value: (t) => (onFront(t) ? 1 : 0), descendingFirst: true, render: (t) => (onFront(t) ? "yes" : "") },
    { key: "duration_s", label: "Time", numeric: true, value: (t) => t.duration_s, render: (t) => (isNumber(t.duration_s) ? `${t.duration_s.toFixed(1)} s` : "—") },
  ],
});

function onFront(trial) {
  return Boolean(state.lastPlot && state.lastPlot.front.has(trial.number));
}

// --- actions -------------------------------------------------------------------------------------

async function cancelJob() {
  if (!window.confirm("Cancel this job? It stops after its current trial; finished trials are kept.")) return;
  const button = byId("cancel-job");
  button.disabled = true;
  byId("action-status").textContent = "Cancelling…";
  try {
    await request(`${base}/cancel`, { method: "POST" });
    byId("action-status").textContent = "Cancel requested: the job stops after its current trial.";
    polling.now();
  } catch (error) {
    button.disabled = false;
    byId("action-status").textContent = "";
    reportError(error, "Could not cancel");
  }
}

// POST /resume continues the job's study up to n_trials (the job's own unless the user asks for
// more), keeping every trial; the page then polls the job running again.
async function resumeJob() {
  const spec = (state.job && state.job.spec) || {};
  const done = state.job ? state.job.progress.trials_completed : 0;
  const answer = window.prompt(
    `Resume this job? Its ${plural(done, "finished trial")} are kept and its study continues up to this many trials:`,
    String(spec.n_trials ?? ""),
  );
  if (answer === null) return;
  const nTrials = Number.parseInt(answer, 10);
  const body = Number.isInteger(nTrials) && nTrials !== spec.n_trials ? { n_trials: nTrials } : undefined;
  const button = byId("resume-job");
  button.disabled = true;
  byId("action-status").textContent = "Resuming…";
  try {
    await request(`${base}/resume`, { method: "POST", body });
    byId("action-status").textContent = "Resumed: the job is queued and continues its study.";
    state.report = null; // computed again when the job ends
    state.artifacts = null;
    polling.restart();
  } catch (error) {
    byId("action-status").textContent = "";
    reportError(error, "Could not resume");
  } finally {
    button.disabled = false;
  }
}

function csvCell(value) {
  if (value === null || value === undefined) return "";
  const text = typeof value === "object" ? JSON.stringify(value) : String(value);
  return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function trialsCsv() {
  const trials = [...state.trials.values()].sort((a, b) => a.number - b.number);
  const scoreNames = [...new Set(trials.flatMap((t) => Object.keys(t.scores || {})))];
  const header = ["number", "state", "origin", "param_count", "param_ratio", "value", "values", ...scoreNames.map((n) => `score_${n}`), "tokens", "verified_kl", "verified_ppl", "verified_tokens", "duration_s", "arch"];
  const lines = [header.join(",")];
  for (const t of trials) {
    const v = t.verified || {};
    lines.push(
      [t.number, t.state, t.origin, t.param_count, t.param_ratio, t.value, t.values, ...scoreNames.map((n) => (t.scores || {})[n]), t.tokens, v.kl, v.ppl, v.tokens, t.duration_s, t.arch]
        .map(csvCell)
        .join(","),
    );
  }
  return `${lines.join("\n")}\n`;
}

function download(kind) {
  if (!state.job) return;
  if (kind === "json") {
    const trials = [...state.trials.values()].sort((a, b) => a.number - b.number);
    const body = { job: state.job, trials, pareto: state.lastPlot ? [...state.lastPlot.front].sort((a, b) => a - b) : [], report: state.report };
    saveBlob(new Blob([JSON.stringify(body, null, 2)], { type: "application/json" }), `prunesearch-job-${jobId}.json`);
  } else {
    saveBlob(new Blob([trialsCsv()], { type: "text/csv" }), `prunesearch-job-${jobId}-trials.csv`);
  }
}

// --- start ---------------------------------------------------------------------------------------

setupApiKey();
byId("cancel-job").addEventListener("click", cancelJob);
byId("resume-job").addEventListener("click", resumeJob);
byId("download-json").addEventListener("click", () => download("json"));
byId("download-csv").addEventListener("click", () => download("csv"));

const polling = poller(tick, POLL_MS);
polling.now();
window.addEventListener(KEY_EVENT, () => {
  hideAlert();
  polling.restart();
});

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (state.lastPlot) drawScatter(byId("plot"), state.lastPlot);
  }, 150);
});

// Ages ("3 min ago") move on even when polling has stopped.
setInterval(() => {
  if (state.job) renderSummary(state.job);
}, 30000);

