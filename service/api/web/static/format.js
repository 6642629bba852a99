// Number, time and state formatting shared by the pages.

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

export function percent(ratio, digits = 1) {
  return isNumber(ratio) ? `${(ratio * 100).toFixed(digits)}%` : "—";
}

export function score(value) {
  if (!isNumber(value)) return "—";
  const size = Math.abs(value);
  if (size !== 0 && (size < 1e-3 || size >= 1e5)) return value.toExponential(3);
  return value.toFixed(4);
}

export function integer(value) {
  return isNumber(value) ? Math.round(value).toLocaleString("en-US") : "—";
}

/** 8_100_000 → "8.1M". */
export function compact(value) {
  if (!isNumber(value)) return "—";
  const units = [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "k"]];
  for (const [size, unit] of units) {
    if (Math.abs(value) >= size) return `${(value / size).toFixed(value / size >= 100 ? 0 : 1)}${unit}`;
  }
  return String(Math.round(value));
}

/** Seconds → "2 h 5 min", "3 min 10 s", "42 s". */
export function duration(seconds) {
  if (!isNumber(seconds)) return "—";
  const total = Math.max(0, Math.round(seconds));
  if (total < 60) return `${total} s`;
  const minutes = Math.floor(total / 60);
  if (minutes < 60) return `${minutes} min ${total % 60} s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ${minutes % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** An ISO timestamp → "3 min ago". */
export function age(iso, now = Date.now()) {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return "—";
  const seconds = Math.max(0, (now - then) / 1000);
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 48 * 3600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} days ago`;
}

export function dateTime(iso) {
  const then = Date.parse(iso);
  return Number.isNaN(then) ? "" : new Date(then).toLocaleString();
}

export function shortId(id) {
  return String(id).slice(0, 8);
}

/** The last component of a model path or hub id ("models/ref-llama-7m" → "ref-llama-7m"), whatever its form. */
export function modelName(model) {
  const text = String(model || "");
  const parts = text.split(/[/\\]/).filter(Boolean);
  return parts[parts.length - 1] || text;
}

export function plural(count, one, many = `${one}s`) {
  return `${count} ${count === 1 ? one : many}`;
}
