// /compare?jobs=a,b: jobs of one model side by side, from one call to GET /v1/compare: their fronts
// on one plot (one colour each), their settings and verified figures, their best architectures per layer.

import { API, ApiError, getJSON, KEY_EVENT } from "./api.js";
import { denseScale, widthBar } from "./arch.js";
import { hideAlert, poller, reportError, setupApiKey } from "./common.js";
import { byId, h, replace } from "./dom.js";
import { integer, isNumber, modelName, percent, score, shortId, TERMINAL } from "./format.js";
import { trialScore } from "./pareto.js";
import { drawFronts, SERIES_COLOURS } from "./plot.js";

const POLL_MS = 5000;
const SCORE = "score";
const METRIC_LABELS = { kl: "KL to dense", ppl: "Perplexity" };
const NOT_METRICS = new Set(["tokens", "primary"]);

const requested = (new URLSearchParams(window.location.search).get("jobs") || "")
  .split(",")
  .map((id) => id.trim())
  .filter(Boolean);

const state = { comparison: null, metric: null };

const metricLabel = (key) => METRIC_LABELS[key] || String(key).replace(/_/g, " ");
const proxyName = (spec) => (Array.isArray(spec.proxy) ? spec.proxy.join(" + ") : spec.proxy || "—");
const swatch = (index) => h("span", { class: ["swatch", `series-${index % SERIES_COLOURS}`], "aria-hidden": "true" });

function jobHeading(job, index) {
  return h(
    "th",
    { scope: "col", dataset: { jobId: job.id } },
    swatch(index),
    " ",
    h("a", { href: `/jobs/${encodeURIComponent(job.id)}`, title: job.id }, h("code", {}, shortId(job.id))),
  );
}

// --- which figure the plot shows ----------------------------------------------------------------

/** Proxy scores are comparable only between jobs scored by the same proxy. */
function sameProxy(jobs) {
  return new Set(jobs.map((job) => JSON.stringify(job.spec.proxy))).size === 1;
}

function verifiedMetrics(jobs) {
  const keys = new Set();
  for (const job of jobs) {
    const figures = [job.verified.best, ...job.pareto.items.map((t) => t.verified)];
    for (const one of figures) {
      for (const [key, value] of Object.entries(one || {})) if (isNumber(value) && !NOT_METRICS.has(key)) keys.add(key);
    }
  }
  return [...keys].sort((a, b) => Number(b === "kl") - Number(a === "kl"));
}

function metricChoices(jobs) {
  return [...(sameProxy(jobs) ? [SCORE] : []), ...verifiedMetrics(jobs)];
}

function choiceLabel(metric, jobs) {
  return metric === SCORE ? `${proxyName(jobs[0].spec)} score (proxy)` : `${metricLabel(metric)} (verified)`;
}

// --- the plot ------------------------------------------------------------------------------------

function frontPoints(job, metric) {
  const bestNumber = job.best ? job.best.trial_number : null;
  const points = [];
  const seen = new Set();
  const add = (number, x, y) => {
    if (!isNumber(x) || !isNumber(y) || seen.has(number)) return;
    seen.add(number);
    points.push({ number, x, y, best: number === bestNumber });
  };
  for (const trial of job.pareto.items) {
    const y = metric === SCORE ? trialScore(trial, job.spec.objectives) : trial.verified && trial.verified[metric];
    add(trial.number, trial.param_ratio, y);
  }
  // The verified best may not be on the proxy's front: a verified figure still shows it.
  if (job.best && metric !== SCORE) add(job.best.trial_number, job.best.param_ratio, (job.best.verified || {})[metric]);
  return points;
}

function renderPlot(jobs) {
  const series = jobs.map((job, index) => ({ key: job.id, name: `Job ${shortId(job.id)}`, index, points: frontPoints(job, state.metric) }));
  const targets = new Set(jobs.map((job) => job.spec.target && job.spec.target.param_ratio));
  const target = targets.size === 1 ? [...targets][0] : null;
  drawFronts(byId("compare-plot"), { series, target, yLabel: choiceLabel(state.metric, jobs) });
  replace(
    byId("compare-legend"),
    series.map((one, index) => {
      const job = jobs[index];
      return h(
        "li",
        { class: "legend-item", dataset: { jobId: job.id } },
        swatch(index),
        h("a", { href: `/jobs/${encodeURIComponent(job.id)}`, title: job.id }, h("code", {}, shortId(job.id))),
        ` ${proxyName(job.spec)} · ${job.spec.sampler || "—"} · ${one.points.length} points`,
      );
    }),
  );
  byId("compare-plot-note").textContent =
    state.metric === SCORE
      ? "Each job's Pareto front by its proxy score: higher is better, fewer parameters is better. The largest dot is the job's best."
      : `Verified trials of each job's front and its best, by ${metricLabel(state.metric)} on held-out text: lower is better.` +
        (sameProxy(jobs) ? "" : " The jobs use different proxies, whose scores cannot be compared.");
}

function renderChoices(jobs) {
  const select = byId("compare-y");
  const choices = metricChoices(jobs);
  if (!choices.includes(state.metric)) state.metric = choices[0] || SCORE;
  replace(select, choices.map((metric) => h("option", { value: metric, selected: metric === state.metric }, choiceLabel(metric, jobs))));
  select.disabled = choices.length < 2;
}

// --- the tables ----------------------------------------------------------------------------------

function figureRows(jobs) {
  const best = (job) => job.best || {};
  const verified = (job) => job.verified.best || {};
  const rows = [
    ["Status", (job) => h("span", { class: "badge", dataset: { status: job.status } }, job.status)],
    ["Proxy", (job) => proxyName(job.spec)],
    ["Sampler", (job) => job.spec.sampler || "—"],
    ["Objectives", (job) => job.spec.objectives.join(", ")],
    ["Target", (job) => (job.spec.target ? percent(job.spec.target.param_ratio, 0) : "—")],
    ["Trials", (job) => `${job.progress.trials_completed} of ${job.progress.trials_total}`],
    ["Best trial", (job) => (job.best ? `#${job.best.trial_number}` : "—")],
    ["Parameters kept", (job) => percent(best(job).param_ratio, 2)],
    ["Proxy score", (job) => score(best(job).score)],
  ];
  for (const metric of verifiedMetrics(jobs)) {
    rows.push([`${metricLabel(metric)} (best)`, (job) => score(verified(job)[metric])]);
    if (metric !== "kl") rows.push([`${metricLabel(metric)} (dense)`, (job) => score((job.verified.dense || {})[metric])]);
  }
  rows.push(["Verified on", (job) => (isNumber(verified(job).tokens) ? `${integer(verified(job).tokens)} tokens` : "—")]);
  return rows;
}

function renderFigures(jobs) {
  replace(
    byId("compare-figures"),
    h("caption", { class: "visually-hidden" }, "Each job's settings and its best architecture's verified figures"),
    h("thead", {}, h("tr", {}, h("td", {}), jobs.map(jobHeading))),
    h(
      "tbody",
      {},
      figureRows(jobs).map(([label, value]) =>
        h("tr", {}, h("th", { scope: "row" }, label), jobs.map((job) => h("td", { class: "num", dataset: { jobId: job.id } }, value(job)))),
      ),
    ),
  );
}

function layerCell(job, index, scale) {
  const layer = job.best && job.best.arch && (job.best.arch.layers || [])[index];
  if (!layer) return h("td", { dataset: { jobId: job.id } }, "—");
  return h(
    "td",
    { dataset: { jobId: job.id } },
    widthBar(layer.heads, scale.heads, "heads", "attn", scale.exact),
    widthBar(layer.ffn_channels, scale.ffn, "channels", "mlp", scale.exact),
  );
}

function renderLayers(comparison) {
  const jobs = comparison.jobs;
  const archs = jobs.map((job) => job.best && job.best.arch);
  const scale = denseScale(comparison.widths, archs);
  const count = Math.max(0, ...archs.map((arch) => ((arch && arch.layers) || []).length));
  replace(
    byId("compare-layers"),
    h("caption", { class: "visually-hidden" }, "Best architecture of each job, per layer"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col", class: "num" }, "Layer"), jobs.map(jobHeading))),
    h(
      "tbody",
      {},
      Array.from({ length: count }, (_, index) =>
        h("tr", { dataset: { layer: String(index) } }, h("th", { scope: "row", class: "num" }, String(index)), jobs.map((job) => layerCell(job, index, scale))),
      ),
    ),
  );
  byId("layers-note").textContent = scale.exact
    ? "Attention heads (blue) and FFN channels (orange) kept by each job's best architecture."
    : "Attention heads and FFN channels kept; the model's own width could not be read, so bars are relative to the widest layer.";
}

function render() {
  const comparison = state.comparison;
  byId("compare-loading").hidden = true;
  byId("compare-body").hidden = false;
  replace(byId("compare-model"), "Model ", h("code", { title: comparison.model }, modelName(comparison.model)), `, ${comparison.jobs.length} jobs`);
  document.title = `Compare ${comparison.jobs.length} jobs · PruneSearch`;
  renderChoices(comparison.jobs);
  renderPlot(comparison.jobs);
  renderFigures(comparison.jobs);
  renderLayers(comparison);
}

// --- fetching ------------------------------------------------------------------------------------

async function tick() {
  try {
    state.comparison = await getJSON(`${API}/compare?${new URLSearchParams({ jobs: requested.join(",") })}`);
    hideAlert();
    render();
    return state.comparison.jobs.every((job) => TERMINAL.has(job.status)) ? null : POLL_MS;
  } catch (error) {
    reportError(error, "Could not compare these jobs");
    byId("compare-loading").textContent = "Nothing to show: see the message above.";
    return error instanceof ApiError && error.status >= 500 ? POLL_MS : null;
  }
}

setupApiKey();
byId("compare-y").addEventListener("change", (event) => {
  state.metric = event.target.value;
  if (state.comparison) renderPlot(state.comparison.jobs);
});
if (requested.length < 2) {
  byId("compare-loading").textContent = "Pick two or more jobs of the same model on the jobs list, then press “Compare”.";
} else {
  const polling = poller(tick, POLL_MS);
  polling.now();
  window.addEventListener(KEY_EVENT, () => polling.restart());
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (state.comparison) renderPlot(state.comparison.jobs);
  }, 150);
});
