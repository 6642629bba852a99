// Inline SVG plots against the parameter ratio: one job's trials with its Pareto front highlighted
// (drawScatter), and several jobs' fronts in one colour each (drawFronts).

import { replace, s } from "./dom.js";
import { isNumber, percent, score as fmtScore } from "./format.js";

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const unit = raw / power;
  return (unit >= 5 ? 10 : unit >= 2 ? 5 : unit >= 1 ? 2 : 1) * power;
}

function ticks(lo, hi, count) {
  const step = niceStep(hi - lo, count);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return { values: out, step };
}

function domain(values, { pad = 0.06, minSpan = 0.01, include = [] } = {}) {
  const all = values.concat(include).filter(isNumber);
  if (!all.length) return [0, 1];
  let lo = Math.min(...all);
  let hi = Math.max(...all);
  const span = Math.max(hi - lo, minSpan, Math.abs(hi) * 0.02);
  const middle = (lo + hi) / 2;
  lo = Math.min(lo, middle - span / 2) - span * pad;
  hi = Math.max(hi, middle + span / 2) + span * pad;
  return [lo, hi];
}

function tickLabel(value, step, asPercent) {
  if (asPercent) {
    const digits = Math.max(0, -Math.floor(Math.log10(step * 100) + 1e-9));
    return `${(value * 100).toFixed(digits)}%`;
  }
  const digits = Math.min(6, Math.max(0, -Math.floor(Math.log10(step) + 1e-9)));
  return value.toFixed(digits);
}

/**
 * The SVG, its scales and its grid, axes and target line: what every plot here shares. The x axis
 * is the fraction of parameters kept unless xLabel names another quantity (xPercent false: plain numbers).
 */
function frame(container, { xs, ys, target, yLabel, title, description, xLabel = "parameters kept", xPercent = true }) {
  const width = Math.max(300, Math.round(container.clientWidth || 640));
  const height = Math.round(Math.min(420, Math.max(240, width * 0.55)));
  const narrow = width < 480;
  // The top margin holds the target's label, above the points, so it never covers one.
  const margin = { top: 24, right: 16, bottom: 46, left: narrow ? 58 : 70 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const [x0, x1] = domain(xs, { include: isNumber(target) ? [target] : [] });
  const [y0, y1] = domain(ys, { minSpan: 1e-6 });
  const sx = (x) => margin.left + ((x - x0) / (x1 - x0)) * plotW;
  const sy = (y) => margin.top + (1 - (y - y0) / (y1 - y0)) * plotH;

  const svg = s(
    "svg",
    {
      class: "scatter",
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      role: "img",
      "aria-labelledby": "scatter-title scatter-desc",
    },
    s("title", { id: "scatter-title" }, title),
    s("desc", { id: "scatter-desc" }, description),
  );

  const xt = ticks(x0, x1, narrow ? 4 : 6);
  const yt = ticks(y0, y1, 5);
  const grid = s("g", { class: "grid", "aria-hidden": "true" });
  for (const v of xt.values) {
    grid.append(
      s("line", { x1: sx(v), x2: sx(v), y1: margin.top, y2: margin.top + plotH }),
      s("text", { x: sx(v), y: margin.top + plotH + 18, class: "tick", "text-anchor": "middle" }, tickLabel(v, xt.step, xPercent)),
    );
  }
  for (const v of yt.values) {
    grid.append(
      s("line", { x1: margin.left, x2: margin.left + plotW, y1: sy(v), y2: sy(v) }),
      s("text", { x: margin.left - 6, y: sy(v) + 4, class: "tick", "text-anchor": "end" }, tickLabel(v, yt.step, false)),
    );
  }
  grid.append(
    s("rect", { class: "frame", x: margin.left, y: margin.top, width: plotW, height: plotH }),
    s("text", { class: "axis-label", x: margin.left + plotW / 2, y: height - 6, "text-anchor": "middle" }, xLabel),
    s(
      "text",
      {
        class: "axis-label",
        transform: `translate(14 ${margin.top + plotH / 2}) rotate(-90)`,
        "text-anchor": "middle",
      },
      yLabel,
    ),
  );
  svg.append(grid);

  if (isNumber(target)) {
    svg.append(
      s(
        "g",
        { class: "target", "aria-hidden": "true" },
        s("line", { x1: sx(target), x2: sx(target), y1: margin.top, y2: margin.top + plotH }),
        s("text", { x: Math.min(Math.max(sx(target), margin.left + 22), width - 24), y: margin.top - 8, "text-anchor": "middle" }, "target"),
      ),
    );
  }
  return { svg, sx, sy };
}

/** The front as a staircase: from each point (by x), keep its y until the next point's x. */
function staircase(points, sx, sy) {
  const steps = [];
  points.forEach((p, i) => {
    steps.push(`${sx(p.x)},${sy(p.y)}`);
    const next = points[i + 1];
    if (next) steps.push(`${sx(next.x)},${sy(p.y)}`);
  });
  return steps.join(" ");
}

/**
 * Draw into `container`. points: [{number, x: param_ratio, y: score, label}], front: Set of numbers,
 * best: trial number or null, target: param ratio or null. A latency job's x is its predicted
 * milliseconds per step: xLabel names it and xPercent false prints plain numbers.
 */
export function drawScatter(container, { points, front, best = null, target = null, yLabel = "score", xLabel = "parameters kept", xPercent = true }) {
  const onFront = points.filter((p) => front.has(p.number)).sort((a, b) => a.x - b.x);
  const { svg, sx, sy } = frame(container, {
    xs: points.map((p) => p.x),
    ys: points.map((p) => p.y),
    target,
    yLabel,
    xLabel,
    xPercent,
    title: `Trials: ${yLabel} against ${xPercent ? "fraction of " : ""}${xLabel}`,
    description: points.length
      ? `${points.length} trials plotted; ${onFront.length} on the Pareto front (higher ${yLabel}, ${xPercent ? "fewer parameters" : `lower ${xLabel}`}).` +
        (best !== null ? ` Best trial: ${best}.` : "")
      : "No finished trials yet.",
  });
  if (onFront.length > 1) {
    svg.append(s("polyline", { class: "front-line", points: staircase(onFront, sx, sy), "aria-hidden": "true" }));
  }
  const dots = s("g", { class: "points" });
  // Front and best last, so they are drawn on top.
  const ordered = [...points].sort((a, b) => Number(front.has(a.number)) - Number(front.has(b.number)));
  for (const p of ordered) {
    const isFront = front.has(p.number);
    const isBest = p.number === best;
    dots.append(
      s(
        "circle",
        {
          class: ["point", isFront && "pareto", isBest && "best"],
          cx: sx(p.x).toFixed(1),
          cy: sy(p.y).toFixed(1),
          r: isBest ? 7 : isFront ? 5.5 : 4,
          dataset: { trial: String(p.number) },
        },
        s(
          "title",
          {},
          `Trial ${p.number}${p.label ? ` (${p.label})` : ""}: ${yLabel} ${fmtScore(p.y)}, ${xPercent ? `${percent(p.x, 2)} of parameters` : `${fmtScore(p.x)} ${xLabel}`}` +
            (isFront ? ", on the Pareto front" : "") +
            (isBest ? ", best" : ""),
        ),
      ),
    );
  }
  svg.append(dots);
  replace(container, svg);
  return svg;
}

/**
 * Several fronts on one plot, one colour each (CSS class `series-<index>`). series: [{key, name,
 * index, points: [{number, x, y, best}]}], the points of each already on its front.
 */
export function drawFronts(container, { series, target = null, yLabel = "score" }) {
  const all = series.flatMap((one) => one.points);
  const { svg, sx, sy } = frame(container, {
    xs: all.map((p) => p.x),
    ys: all.map((p) => p.y),
    target,
    yLabel,
    title: `Pareto fronts: ${yLabel} against fraction of parameters kept`,
    description: series.map((one) => `${one.name}: ${one.points.length} points`).join("; ") || "Nothing to plot.",
  });
  for (const one of series) {
    const points = [...one.points].sort((a, b) => a.x - b.x);
    const group = s("g", { class: ["series", `series-${one.index % SERIES_COLOURS}`], dataset: { series: one.key } });
    if (points.length > 1) group.append(s("polyline", { class: "series-line", points: staircase(points, sx, sy), "aria-hidden": "true" }));
    for (const p of points) {
      group.append(
        s(
          "circle",
          { class: ["series-point", p.best && "best"], cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r: p.best ? 7 : 5, dataset: { trial: String(p.number) } },
          s("title", {}, `${one.name}, trial ${p.number}: ${yLabel} ${fmtScore(p.y)}, ${percent(p.x, 2)} of parameters${p.best ? ", best" : ""}`),
        ),
      );
    }
    svg.append(group);
  }
  replace(container, svg);
  return svg;
}

// Distinct colours in app.css (.series-0 ... .series-7): one per job of a comparison (at most 8).
export const SERIES_COLOURS = 8;
