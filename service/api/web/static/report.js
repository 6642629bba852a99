// The verification and proxy-trust report, drawn from whatever JSON the server returns: objects of
// numbers become definition lists, lists and maps of records become tables, flags are called out.

import { h } from "./dom.js";
import { isNumber, score } from "./format.js";

function label(key) {
  const text = String(key).replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function scalar(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (isNumber(value)) return Number.isInteger(value) ? value.toLocaleString("en-US") : score(value);
  return String(value);
}

const isScalar = (value) => value === null || ["string", "number", "boolean"].includes(typeof value);
const isRecord = (value) => value && typeof value === "object" && !Array.isArray(value);

function table(rows, keyLabel = null) {
  // rows: [[rowName|null, record]]
  const columns = [];
  for (const [, record] of rows) for (const key of Object.keys(record)) if (!columns.includes(key)) columns.push(key);
  return h(
    "div",
    { class: "table-scroll", tabindex: "0", role: "region", "aria-label": keyLabel || "Report table" },
    h(
      "table",
      { class: "data report-table" },
      h(
        "thead",
        {},
        h("tr", {}, keyLabel ? h("th", { scope: "col" }, keyLabel) : null, columns.map((c) => h("th", { scope: "col" }, label(c)))),
      ),
      h(
        "tbody",
        {},
        rows.map(([name, record]) =>
          h(
            "tr",
            { class: record.flagged || record.warning ? "flagged" : null },
            keyLabel ? h("th", { scope: "row" }, String(name)) : null,
            columns.map((c) => h("td", { class: isNumber(record[c]) ? "num" : null }, render(record[c], 2))),
          ),
        ),
      ),
    ),
  );
}

function render(value, depth) {
  if (isScalar(value)) return scalar(value);
  if (Array.isArray(value)) {
    if (value.every(isScalar)) return value.map(scalar).join(", ");
    if (value.every((item) => isRecord(item) && Object.values(item).every(isScalar))) {
      return table(value.map((item) => [null, item]));
    }
    return h("ol", {}, value.map((item) => h("li", {}, render(item, depth + 1))));
  }
  const entries = Object.entries(value);
  if (entries.length && entries.every(([, v]) => isRecord(v) && Object.values(v).every(isScalar))) {
    return table(entries, "Name");
  }
  if (depth > 3) return JSON.stringify(value);
  return h(
    "dl",
    { class: "summary" },
    entries.map(([key, v]) => [h("dt", {}, label(key)), h("dd", {}, render(v, depth + 1))]),
  );
}

/** Render a report object into a list of sections (one per top-level key). */
export function renderReport(report) {
  if (!isRecord(report)) return [h("p", {}, render(report, 0))];
  const notes = [];
  const flags = report.flags || report.warnings;
  if (Array.isArray(flags) && flags.length) {
    notes.push(h("ul", { class: "flags" }, flags.map((f) => h("li", {}, isScalar(f) ? scalar(f) : JSON.stringify(f)))));
  }
  const scalars = Object.entries(report).filter(([k, v]) => isScalar(v) && !["flags", "warnings"].includes(k));
  const nested = Object.entries(report).filter(([k, v]) => !isScalar(v) && !["flags", "warnings"].includes(k));
  const out = [...notes];
  if (scalars.length) {
    out.push(h("dl", { class: "summary" }, scalars.map(([k, v]) => [h("dt", {}, label(k)), h("dd", {}, scalar(v))])));
  }
  for (const [key, value] of nested) {
    out.push(h("section", { class: "report-part" }, h("h3", {}, label(key)), render(value, 1)));
  }
  return out;
}
