// The best architecture, one table row per decoder layer: attention and MLP kept or dropped, with
// bars for the heads and FFN channels kept, and the unstructured sparsity when the search set one.

import { h, replace } from "./dom.js";
import { isNumber, percent } from "./format.js";

/**
 * The dense sizes bars are drawn against: the model's (GET /model), else the widest layer of any
 * trial, which is only a lower bound: then the labels give counts without "of".
 */
export function denseScale(model, archs) {
  if (model && isNumber(model.num_heads) && isNumber(model.intermediate_size)) {
    return { heads: model.num_heads, ffn: model.intermediate_size, exact: true };
  }
  let heads = 0;
  let ffn = 0;
  for (const arch of archs) {
    for (const layer of (arch && arch.layers) || []) {
      if (isNumber(layer.heads)) heads = Math.max(heads, layer.heads);
      if (isNumber(layer.ffn_channels)) ffn = Math.max(ffn, layer.ffn_channels);
    }
  }
  return { heads, ffn, exact: false };
}

/** One layer's kept heads or channels as a bar against the dense width, or "dropped". */
export function widthBar(kept, total, unit, kind, exact) {
  if (!isNumber(kept) || kept <= 0) {
    return h("span", { class: ["block", "dropped", kind] }, h("span", { class: "block-label" }, "dropped"));
  }
  const fraction = total > 0 ? Math.min(1, kept / total) : 1;
  const fill = h("span", { class: "bar-fill" });
  fill.style.width = `${(fraction * 100).toFixed(1)}%`;
  return h(
    "span",
    { class: ["block", "kept", kind] },
    h("span", { class: "bar", "aria-hidden": "true" }, fill),
    h("span", { class: "block-label" }, exact ? `${kept} of ${total} ${unit}` : `${kept} ${unit}`),
  );
}

export function drawArch(tbody, arch, scale, { sparsityHead, note } = {}) {
  const layers = (arch && arch.layers) || [];
  const hasSparsity = layers.some((layer) => isNumber(layer.sparsity) && layer.sparsity > 0);
  if (sparsityHead) sparsityHead.hidden = !hasSparsity;
  if (note) {
    note.textContent = scale.exact
      ? ""
      : " (the model's own width could not be read: bars are relative to the widest layer of any trial)";
  }
  replace(
    tbody,
    layers.map((layer, index) => {
      const removed = !(layer.heads > 0) && !(layer.ffn_channels > 0);
      return h(
        "tr",
        { class: removed ? "layer-removed" : null, dataset: { layer: String(index) } },
        h("th", { scope: "row", class: "num" }, String(index)),
        h("td", {}, widthBar(layer.heads, scale.heads, "heads", "attn", scale.exact)),
        h("td", {}, widthBar(layer.ffn_channels, scale.ffn, "channels", "mlp", scale.exact)),
        hasSparsity ? h("td", { class: "num" }, isNumber(layer.sparsity) ? percent(layer.sparsity, 0) : "—") : null,
      );
    }),
  );
}
