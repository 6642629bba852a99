// The report a job writes when its search ends, told for people: the verified candidates beside the
// baselines and the dense model in one table, the verification ladder one sentence per round, how
// far the proxy can be trusted as a sentence (its numbers behind a disclosure), the exported model.

import { h } from "./dom.js";
import { compact, duration, integer, isNumber, percent, plural, score } from "./format.js";

const METRICS = {
  kl: { label: "KL to dense", unit: "nats/token" },
  ppl: { label: "Perplexity" },
  similarity_gap: { label: "Similarity gap" },
  similarity_spearman: { label: "Similarity agreement" },
  cosine_distance: { label: "Cosine distance" },
  mse: { label: "Mean squared error" },
};

const ORIGINS = {
  "seed:uniform": "Uniform width",
  "seed:block_influence": "Block Influence (layers dropped)",
  "seed:owl": "OWL sparsity",
};

const PROXIES = {
  kl: "KL on the calibration tokens",
  tracenas: "TraceNAS",
  tracenas_sum: "TraceNAS (sum over blocks)",
  prunenet: "PruneNet",
};

const isRecord = (value) => Boolean(value) && typeof value === "object" && !Array.isArray(value);
const list = (value) => (Array.isArray(value) ? value : []);

const proxyLabel = (name) => PROXIES[name] || String(name);
const metricLabel = (key) => (METRICS[key] ? METRICS[key].label : String(key).replace(/_/g, " "));
const isBaseline = (origin) => typeof origin === "string" && origin.startsWith("seed:");

function numbers(values) {
  const words = values.map((v) => String(v));
  return words.length < 2 ? words.join("") : `${words.slice(0, -1).join(", ")} and ${words[words.length - 1]}`;
}

function fixed(value, digits = 2) {
  return isNumber(value) ? value.toFixed(digits).replace("-", "−") : "—";
}

/** A measured figure with three significant digits in one notation per column: 0.000573, 0.00836, 524.0. */
function figure(value) {
  if (!isNumber(value)) return "—";
  const size = Math.abs(value);
  if (size === 0) return "0";
  if (size >= 100) return value.toFixed(1);
  if (size >= 1e-6) return value.toPrecision(3);
  return value.toExponential(2);
}

// --- verified candidates -------------------------------------------------------------------------

function candidateName(entry, bestNumber) {
  if (entry.dense) return ["Dense model", h("span", { class: "sub" }, "the reference")];
  if (isBaseline(entry.origin)) {
    return [ORIGINS[entry.origin] || entry.origin.slice(5), h("span", { class: "sub" }, `baseline · trial ${entry.trial_number}`)];
  }
  const chosen = entry.trial_number === bestNumber;
  return [`Trial ${entry.trial_number}`, chosen ? h("span", { class: "tag" }, "best") : null, h("span", { class: "sub" }, "found by the search")];
}

function metricColumns(rows, primary) {
  const keys = new Set();
  for (const row of rows) for (const [key, value] of Object.entries(row)) if (isNumber(value)) keys.add(key);
  for (const skip of ["tokens", "trial_number", "proxy_score", "param_ratio"]) keys.delete(skip);
  return [...keys].sort((a, b) => Number(b === primary) - Number(a === primary));
}

function cell(label, content, numeric = true) {
  return h("td", { class: numeric ? "num" : null, dataset: { label } }, content);
}

function candidateRow(entry, columns, context) {
  const trial = context.trials.get(entry.trial_number);
  const ratio = entry.dense ? 1 : trial && trial.param_ratio;
  const chosen = !entry.dense && entry.trial_number === context.bestNumber;
  return h(
    "tr",
    { class: [entry.dense && "dense", chosen && "chosen"], dataset: { trial: entry.dense ? "dense" : String(entry.trial_number) } },
    h("th", { scope: "row" }, candidateName(entry, context.bestNumber)),
    cell("Parameters kept", percent(ratio, 1)),
    cell("Proxy score", entry.dense ? "—" : score(entry.proxy_score)),
    columns.map((key) => cell(metricLabel(key), figure(entry[key]))),
  );
}

function verifiedTable(verification, context) {
  const finalists = list(verification.finalists).filter(isRecord);
  if (!finalists.length) return null;
  const dense = isRecord(verification.dense) ? [{ ...verification.dense, dense: true }] : [];
  const rows = [...finalists, ...dense];
  const columns = metricColumns(rows, verification.primary);
  const head = ["Candidate", "Parameters kept", "Proxy score", ...columns.map((key) => {
    const unit = METRICS[key] && METRICS[key].unit;
    return unit ? [metricLabel(key), h("br", {}), h("span", { class: "unit" }, unit)] : metricLabel(key);
  })];
  return h(
    "table",
    { class: "data stacked verified-table", id: "verified-table" },
    h("caption", { class: "visually-hidden" }, "Verified candidates, baselines and the dense model"),
    h("thead", {}, h("tr", {}, head.map((label, i) => h("th", { scope: "col", class: i ? "num" : null }, label)))),
    h("tbody", {}, rows.map((entry) => candidateRow(entry, columns, context))),
  );
}

function verificationPart(verification, context) {
  const table = verifiedTable(verification, context);
  if (!table) return null;
  const tokens = isRecord(verification.dense) ? verification.dense.tokens : list(verification.finalists)[0]?.tokens;
  const finalists = list(verification.finalists).filter(isRecord);
  const searched = finalists.filter((f) => !isBaseline(f.origin)).length;
  const intro =
    `The search's ${plural(searched, "favourite")} and ${plural(finalists.length - searched, "baseline")} were run on ` +
    `${isNumber(tokens) ? `${integer(tokens)} held-out tokens` : "held-out text"} the search never saw, beside the dense model. ` +
    `Lower ${metricLabel(verification.primary || "kl")} is closer to the dense model.`;
  return h(
    "section",
    { class: "report-part", id: "report-verified" },
    h("h3", {}, "Verified on held-out text"),
    h("p", {}, intro),
    h("div", { class: "table-scroll" }, table),
  );
}

// --- the ladder ----------------------------------------------------------------------------------

function rungSentence(rung, index, last) {
  const candidates = list(rung.candidates).filter(isRecord);
  const baselines = candidates.filter((c) => c.baseline).length;
  const searched = candidates.length - baselines;
  const where = `${plural(rung.sequences, "held-out sequence")} (${integer(rung.tokens)} tokens)`;
  const who = `${plural(searched, "candidate")} from the search${baselines ? ` and ${plural(baselines, "baseline")}` : ""}`;
  const survivors = list(rung.survivors);
  const next = last
    ? `the figures in the table come from this round${survivors.length ? `; the best ${survivors.length === 1 ? "is trial" : "are trials"} ${numbers(survivors)}` : ""}.`
    : `the best ${survivors.length === 1 ? "went on: trial" : `${survivors.length} went on: trials`} ${numbers(survivors)}.`;
  return h("li", { dataset: { rung: String(index) } }, h("strong", {}, `Round ${index + 1}. `), `${who} measured on ${where}; ${next}`);
}

function ladderPart(verification) {
  const rungs = list(verification.ladder).filter(isRecord);
  if (!rungs.length) return null;
  return h(
    "section",
    { class: "report-part", id: "report-ladder" },
    h("h3", {}, "How the finalists were chosen"),
    h(
      "p",
      {},
      "Successive halving: each round measures the remaining candidates on more held-out text and keeps the better half; the baselines are measured in every round for comparison.",
    ),
    h("ol", { class: "ladder" }, rungs.map((rung, i) => rungSentence(rung, i, i === rungs.length - 1))),
  );
}

// --- trust ---------------------------------------------------------------------------------------

function verdict(entry, threshold) {
  const rho = entry.spearman;
  const interval = list(entry.spearman_ci);
  if (!isNumber(rho) || entry.poor || rho < threshold) return "poor";
  if (rho < 0.5) return "weak";
  // A good ρ whose interval reaches below the threshold: too few audited candidates to be sure.
  if (isNumber(interval[0]) && interval[0] < threshold) return "uncertain";
  return rho < 0.7 ? "moderate" : "strong";
}

function interval(values) {
  const [lo, hi] = list(values);
  return isNumber(lo) && isNumber(hi) ? ` [${fixed(lo)}, ${fixed(hi)}]` : "";
}

function trustSentence(name, entry, trust) {
  const word = verdict(entry, isNumber(trust.threshold) ? trust.threshold : 0.3);
  const metric = metricLabel(trust.metric || "kl");
  const text = isNumber(entry.spearman)
    ? `${proxyLabel(name)} ordered ${plural(entry.n, "audited candidate")} with Spearman ${fixed(entry.spearman)}${interval(entry.spearman_ci)} against their verified ${metric}: `
    : `${proxyLabel(name)} could not be compared with the verified ${metric}: `;
  return h("p", { class: "verdict", dataset: { proxy: name, verdict: word } }, text, h("strong", { class: `verdict-${word}` }, word), ".");
}

function trustTable(proxies, id = null) {
  const columns = [
    ["Proxy", (name) => proxyLabel(name), false],
    ["Spearman [95% CI]", (_, e) => `${fixed(e.spearman)}${interval(e.spearman_ci)}`],
    ["Kendall [95% CI]", (_, e) => `${fixed(e.kendall)}${interval(e.kendall_ci)}`],
    ["Candidates", (_, e) => integer(e.n)],
    ["Follows parameter count", (_, e) => fixed(e.params_spearman)],
    ["Follows depth", (_, e) => fixed(e.depth_spearman)],
  ];
  return h(
    "table",
    { class: "data stacked trust-table", id },
    h("thead", {}, h("tr", {}, columns.map(([label], i) => h("th", { scope: "col", class: i ? "num" : null }, label)))),
    h(
      "tbody",
      {},
      proxies.map(([name, entry]) =>
        h("tr", {}, columns.map(([label, value, numeric = true], i) => (i ? cell(label, value(name, entry), numeric) : h("th", { scope: "row" }, value(name, entry))))),
      ),
    ),
  );
}

function auditNote(trust) {
  const audit = isRecord(trust.audit) ? trust.audit : {};
  const parts = [];
  if (isNumber(audit.size)) {
    parts.push(
      `The audit verified ${plural(audit.size, "candidate")} drawn across the whole range of ${proxyLabel(audit.stratified_by || trust.objective)} scores, not only its favourites` +
        (isNumber(audit.tokens) ? `, on ${integer(audit.tokens)} held-out tokens.` : "."),
    );
  }
  parts.push("Spearman and Kendall are rank correlations: +1 means the proxy orders candidates exactly as the verified figure does, 0 means no relation.");
  parts.push("The last two columns show how much a proxy's score simply follows model size or depth.");
  return h("p", { class: "muted" }, parts.join(" "));
}

// Where the search looked (search/neighbourhood.py): its best trials and small moves of its best,
// where a proxy must tell near-equals apart; the audit above spans the whole range of scores.
function records(value) {
  return Object.entries(isRecord(value) ? value : {}).filter(([, e]) => isRecord(e));
}

function moved(spread) {
  if (!isRecord(spread) || !isNumber(spread.min) || !isNumber(spread.max)) return "";
  return ` moving ${percent(spread.min)} to ${percent(spread.max)} of the blocks' parameters`;
}

function neighbourhoodSentence(nearby, trust) {
  const name = nearby.best_proxy;
  const entry = isRecord(nearby.proxies) && isRecord(nearby.proxies[name]) ? nearby.proxies[name] : null;
  const metric = metricLabel(nearby.metric || trust.metric || "kl");
  let word = entry ? verdict(entry, isNumber(trust.threshold) ? trust.threshold : 0.3) : "poor";
  // Its lead is not settled (its interval overlaps the runner-up's): as for a wide interval.
  if (nearby.uncertain && (word === "moderate" || word === "strong")) word = "uncertain";
  const top = list(nearby.top_region).length;
  const where =
    `Near the best trial ${nearby.best_trial}, among ${plural(nearby.size, "candidate")} ` +
    `(${top} of the search's best trials and ` +
    `${plural(nearby.perturbations, "variation")} of trial ${nearby.best_trial}${moved(nearby.distance)}), `;
  const text = entry && isNumber(entry.spearman)
    ? `${where}${proxyLabel(name)} ranked best with Spearman ${fixed(entry.spearman)}${interval(entry.spearman_ci)} against their verified ${metric}: `
    : `${where}no proxy could be compared with the verified ${metric}: `;
  return h("p", { class: "neighbourhood", dataset: { proxy: name || "", verdict: word } }, text, h("strong", { class: `verdict-${word}` }, word), ".");
}

function neighbourhoodNote(nearby) {
  return h(
    "p",
    { class: "muted" },
    `The second table: ${plural(nearby.size, "candidate")} near the best (the search's best trials and small variations of its best), every proxy scoring all of them` +
      (isNumber(nearby.tokens) ? `, verified on ${integer(nearby.tokens)} held-out tokens` : "") +
      ". Near-equals are what a search must tell apart.",
  );
}

function trustPart(trust) {
  const proxies = records(trust.proxies);
  if (!proxies.length && !list(trust.flags).length) return null;
  const main = proxies.filter(([name]) => name === trust.objective);
  const nearby = isRecord(trust.neighbourhood) ? trust.neighbourhood : null;
  const near = nearby ? records(nearby.proxies) : [];
  return h(
    "section",
    { class: "report-part", id: "report-trust" },
    h("h3", {}, "Can the proxy be trusted?"),
    (main.length ? main : proxies.slice(0, 1)).map(([name, entry]) => trustSentence(name, entry, trust)),
    nearby ? neighbourhoodSentence(nearby, trust) : null,
    proxies.length
      ? h(
          "details",
          { class: "numbers" },
          h("summary", {}, "The numbers behind this"),
          auditNote(trust),
          trustTable(proxies),
          near.length ? [neighbourhoodNote(nearby), trustTable(near, "neighbourhood-table")] : null,
        )
      : null,
  );
}

function flagsPart(report) {
  const flags = list(isRecord(report.trust) ? report.trust.flags : []);
  if (!flags.length) return null;
  return h(
    "div",
    { class: "alert warning", role: "note" },
    h("p", {}, h("strong", {}, "Check before you rely on this job:")),
    h("ul", {}, flags.map((flag) => h("li", {}, typeof flag === "string" ? flag : JSON.stringify(flag)))),
  );
}

// --- recovery ------------------------------------------------------------------------------------

function recoveryRow(finalist, metric, winner) {
  const before = isRecord(finalist.before) ? finalist.before : {};
  const after = isRecord(finalist.after) ? finalist.after : {};
  const chosen = finalist.trial_number === winner;
  return h(
    "tr",
    { class: [chosen && "chosen"], dataset: { trial: String(finalist.trial_number) } },
    h("th", { scope: "row" }, `Trial ${finalist.trial_number}`, chosen ? h("span", { class: "tag" }, "exported") : null),
    cell(`${metricLabel(metric)} before`, figure(before[metric])),
    cell(`${metricLabel(metric)} after`, figure(after[metric])),
    cell("Steps", integer(finalist.steps)),
    cell("Time", isNumber(finalist.seconds) ? duration(finalist.seconds) : "—"),
  );
}

function recoveryPart(recovery) {
  const finalists = list(recovery.finalists).filter(isRecord);
  const metric = recovery.primary || "kl";
  const lora = isNumber(recovery.lora_rank) ? ` LoRA adapters of rank ${recovery.lora_rank}, merged into the weights,` : " every weight";
  const how =
    `The dense model was distilled into the ${plural(finalists.length, "best verified candidate")}:${lora} trained for ` +
    `${integer(recovery.steps)} steps on ${integer(recovery.training_sequences)} sequences (none held out), then verified again. ` +
    (isNumber(recovery.winner) ? `The winner is chosen after recovery: trial ${recovery.winner}, the exported model.` : "Recovery did not finish.");
  const head = ["Finalist", `${metricLabel(metric)} before`, `${metricLabel(metric)} after`, "Steps", "Time"];
  return h(
    "section",
    { class: "report-part", id: "report-recovery" },
    h("h3", {}, "Recovery"),
    h("p", {}, how),
    h(
      "table",
      { class: "data stacked", id: "recovery-table" },
      h("caption", { class: "visually-hidden" }, "Each finalist before and after recovery"),
      h("thead", {}, h("tr", {}, head.map((label, i) => h("th", { scope: "col", class: i ? "num" : null }, label)))),
      h("tbody", {}, finalists.map((finalist) => recoveryRow(finalist, metric, recovery.winner))),
    ),
  );
}

// --- latency -------------------------------------------------------------------------------------

function latencyRow(check) {
  const name = isNumber(check.trial_number) ? `Trial ${check.trial_number}` : "Dense model";
  return h(
    "tr",
    { dataset: { trial: isNumber(check.trial_number) ? String(check.trial_number) : "dense" } },
    h("th", { scope: "row" }, name),
    cell("Predicted ms", figure(check.predicted_ms)),
    cell("Measured ms", figure(check.measured_ms)),
    cell("Error", isNumber(check.error) ? `${check.error >= 0 ? "+" : ""}${(check.error * 100).toFixed(1)}%` : "—"),
  );
}

// Where a job's latency table came from (search.results.LatencyReport.table).
const TABLE_ORIGINS = {
  measured: "measured by this job",
  stored: "read from the artifact store",
  "re-timed": "stored, timed again by this job: its probe model no longer stepped as long",
};

// A latency job (target.latency_ratio or the latency objective): predicted against measured latency.
function latencyPart(latency) {
  const checks = [latency.dense, ...list(latency.finalists)].filter(isRecord);
  const setting = latency.phase === "prefill" ? `prefill, batch ${latency.batch} × ${latency.context} tokens` : `decode, batch ${latency.batch}, context ${latency.context}`;
  const fit = isNumber(latency.table_fit_error) ? ` (the table's fit to the whole models it was calibrated on: ${(latency.table_fit_error * 100).toFixed(1)}%)` : "";
  const error = isNumber(latency.median_abs_error) ? ` Median prediction error: ${(latency.median_abs_error * 100).toFixed(1)}%${fit}.` : "";
  const how =
    `Time per step (${setting}) on ${latency.device} in ${latency.dtype}, predicted from the latency table ` +
    `(${TABLE_ORIGINS[latency.table] ?? "measured by this job"}) and measured on each verified candidate built as exported.${error}`;
  const head = ["Candidate", "Predicted ms", "Measured ms", "Error"];
  return h(
    "section",
    { class: "report-part", id: "report-latency" },
    h("h3", {}, "Latency"),
    h("p", {}, how),
    h(
      "table",
      { class: "data stacked", id: "latency-table" },
      h("caption", { class: "visually-hidden" }, "Predicted against measured latency"),
      h("thead", {}, h("tr", {}, head.map((label, i) => h("th", { scope: "col", class: i ? "num" : null }, label)))),
      h("tbody", {}, checks.map(latencyRow)),
    ),
  );
}

// --- export --------------------------------------------------------------------------------------

// Reports stored before the speed report hold one forward's latency instead.
function latencySentence(latency) {
  if (!isRecord(latency) || !isNumber(latency.pruned_tokens_per_s) || !isNumber(latency.dense_tokens_per_s)) return "";
  const speedup = isNumber(latency.speedup) ? `: ${latency.speedup.toFixed(2)}× ${latency.speedup >= 1 ? "faster" : "the speed"}` : "";
  return ` On ${latency.device || "the worker"} it processes ${integer(latency.pruned_tokens_per_s)} tokens/s against ${integer(latency.dense_tokens_per_s)} for the dense model${speedup}.`;
}

function times(speedup) {
  return isNumber(speedup) ? `${speedup.toFixed(2)}×` : "";
}

function millis(seconds) {
  return isNumber(seconds) ? `${(seconds * 1000).toFixed(1)} ms` : "";
}

function bytes(value) {
  return isNumber(value) ? `${compact(value)}B` : "";
}

// One row per measurement: [what, dense, exported, speedup].
function speedRows(speed) {
  const rows = list(speed.prefill).filter(isRecord).map((p) => [`Prefill, batch ${p.batch} × ${integer(p.tokens)} tokens`, millis(p.dense_s), millis(p.pruned_s), times(p.speedup)]);
  for (const d of list(speed.decode).filter(isRecord)) {
    rows.push([`Decode, batch ${d.batch}, ${integer(d.new_tokens)} new tokens (tokens/s)`, integer(d.dense_tokens_per_s), integer(d.pruned_tokens_per_s), times(d.speedup)]);
  }
  rows.push(["Peak memory", bytes(speed.dense_peak_bytes), bytes(speed.pruned_peak_bytes), ""]);
  rows.push(["Weights on disk", bytes(speed.dense_size_bytes), bytes(speed.pruned_size_bytes), ""]);
  return rows;
}

function speedTable(speed) {
  const head = ["", "Dense", "Exported", "Speed-up"];
  return h(
    "table",
    { class: "data stacked speed-table", id: "speed-table" },
    h("thead", {}, h("tr", {}, head.map((label, i) => h("th", { scope: "col", class: i ? "num" : null }, label)))),
    h("tbody", {}, speedRows(speed).map(([label, ...values]) => h("tr", {}, [h("th", { scope: "row" }, label), ...values.map((value, i) => cell(head[i + 1], value, true))]))),
  );
}

function speedNote(speed) {
  const workload = isRecord(speed.workload) ? speed.workload : {};
  return (
    `Measured on ${speed.device || "the worker"}, both models in ${speed.dtype || "the export's precision"}: medians of ${integer(workload.repeats)} runs after ${plural(workload.warmup || 0, "warm-up run")}, the two models taking turns. ` +
    `Decoding is greedy generation with the KV cache after a ${plural(workload.prompt_tokens || 0, "token")} prompt; its tokens/s include that prompt. Peak memory: ${speed.peak_memory || "not measured"}.`
  );
}

function exportPart(exported) {
  if (!isRecord(exported) || !isNumber(exported.param_count)) return null;
  const ratio = isNumber(exported.dense_params) ? ` (${percent(exported.param_count / exported.dense_params, 1)} of ${integer(exported.dense_params)})` : "";
  const weights = isNumber(exported.weights_bytes) && isNumber(exported.dense_weights_bytes)
    ? `; its weights take ${bytes(exported.weights_bytes)} on disk in ${exported.dtype || "the checkpoint's precision"}, ${percent(exported.weights_bytes / exported.dense_weights_bytes, 1)} of the dense model's ${bytes(exported.dense_weights_bytes)}`
    : isNumber(exported.size_bytes) ? `, ${bytes(exported.size_bytes)} on disk` : "";
  const speed = isRecord(exported.speed) ? exported.speed : null;
  const text = `The exported model has ${integer(exported.param_count)} parameters${ratio}${weights}.${speed ? "" : latencySentence(exported.latency)}`;
  const parts = [h("h3", {}, "The exported model"), h("p", {}, text)];
  if (speed) parts.push(h("div", { class: "table-scroll" }, speedTable(speed)), h("p", { class: "muted" }, speedNote(speed)));
  return h("section", { class: "report-part", id: "report-export" }, ...parts);
}

/**
 * The report's sections. context: { trials: Map number → trial (for parameter ratios),
 * bestNumber: the job's best trial }.
 */
export function renderReport(report, context) {
  if (!isRecord(report)) return [h("p", {}, String(report))];
  const verification = isRecord(report.verification) ? report.verification : {};
  return [
    flagsPart(report),
    verificationPart(verification, context),
    ladderPart(verification),
    isRecord(report.trust) ? trustPart(report.trust) : null,
    isRecord(report.recovery) ? recoveryPart(report.recovery) : null,
    isRecord(report.latency) ? latencyPart(report.latency) : null,
    exportPart(report.export),
  ];
}
