// The Pareto front of trials: higher score and fewer parameters are better.

import { isNumber } from "./format.js";

/**
 * Points {x, y, ...}: minimise x, maximise y. Returns the non-dominated points, by x ascending.
 * A point is dominated when another is no worse in both and better in one; equal points are all kept.
 */
export function paretoFront(points) {
  const usable = points.filter((p) => isNumber(p.x) && isNumber(p.y));
  usable.sort((a, b) => a.x - b.x || b.y - a.y);
  const front = [];
  let bestBefore = -Infinity; // highest y among points with a strictly smaller x
  for (let i = 0; i < usable.length; ) {
    let j = i;
    while (j < usable.length && usable[j].x === usable[i].x) j += 1;
    const groupBest = usable[i].y; // sorted by y descending within equal x
    for (let k = i; k < j; k += 1) {
      if (usable[k].y === groupBest && groupBest > bestBefore) front.push(usable[k]);
    }
    bestBefore = Math.max(bestBefore, groupBest);
    i = j;
  }
  return front;
}

/** The score a trial is plotted and ranked by: its value, or its "score" objective when multi-objective. */
export function trialScore(trial, objectives) {
  if (isNumber(trial.value)) return trial.value;
  if (Array.isArray(trial.values) && trial.values.length) {
    const index = Array.isArray(objectives) ? objectives.indexOf("score") : -1;
    const value = trial.values[index >= 0 ? index : 0];
    if (isNumber(value)) return value;
  }
  return null;
}

/** Trial numbers on the front the server reported (GET /pareto), whatever its exact shape. */
export function paretoNumbers(body) {
  if (!body) return null;
  const items = Array.isArray(body) ? body : body.items || body.trials || body.front || null;
  if (!Array.isArray(items)) return null;
  const numbers = items
    .map((item) => (typeof item === "number" ? item : item && (item.number ?? item.trial_number)))
    .filter((n) => Number.isInteger(n));
  return new Set(numbers);
}
