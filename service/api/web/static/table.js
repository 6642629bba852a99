// A table sorted by clicking its column buttons (aria-sort says how) and shown page by page.

import { h, replace } from "./dom.js";

export class SortablePagedTable {
  /**
   * columns: [{key, label, value(row) → sortable value, render(row) → node or text, numeric}].
   * rowKey(row) identifies a row; initial sort by `sortKey`.
   */
  constructor({ head, body, prev, next, pageLabel, columns, pageSize = 20, sortKey, sortDir = "ascending", rowKey }) {
    Object.assign(this, { head, body, prev, next, pageLabel, columns, pageSize, sortKey, sortDir, rowKey });
    this.rows = [];
    this.page = 0;
    this.renderHead();
    prev.addEventListener("click", () => this.go(this.page - 1));
    next.addEventListener("click", () => this.go(this.page + 1));
  }

  renderHead() {
    replace(
      this.head,
      this.columns.map((column) => {
        const active = column.key === this.sortKey;
        const arrow = active ? (this.sortDir === "ascending" ? "▲" : "▼") : "";
        return h(
          "th",
          {
            scope: "col",
            class: column.numeric ? "num" : null,
            "aria-sort": active ? this.sortDir : "none",
          },
          h(
            "button",
            { type: "button", class: "sort", dataset: { key: column.key }, onclick: () => this.sortBy(column.key) },
            column.label,
            h("span", { class: "sort-arrow", "aria-hidden": "true" }, arrow),
          ),
        );
      }),
    );
  }

  sortBy(key) {
    if (this.sortKey === key) this.sortDir = this.sortDir === "ascending" ? "descending" : "ascending";
    else {
      this.sortKey = key;
      const column = this.columns.find((c) => c.key === key);
      this.sortDir = column && column.descendingFirst ? "descending" : "ascending";
    }
    this.page = 0;
    this.renderHead();
    this.render();
  }

  setRows(rows) {
    this.rows = rows;
    this.render();
  }

  get pages() {
    return Math.max(1, Math.ceil(this.rows.length / this.pageSize));
  }

  go(page) {
    this.page = Math.min(Math.max(0, page), this.pages - 1);
    this.render();
  }

  sorted() {
    const column = this.columns.find((c) => c.key === this.sortKey) || this.columns[0];
    const sign = this.sortDir === "ascending" ? 1 : -1;
    const keyed = this.rows.map((row, index) => ({ row, index, value: column.value(row) }));
    keyed.sort((a, b) => {
      const missingA = a.value === null || a.value === undefined || Number.isNaN(a.value);
      const missingB = b.value === null || b.value === undefined || Number.isNaN(b.value);
      if (missingA !== missingB) return missingA ? 1 : -1; // blanks last, whatever the direction
      if (!missingA && a.value !== b.value) {
        if (typeof a.value === "string" || typeof b.value === "string") {
          return sign * String(a.value).localeCompare(String(b.value));
        }
        return sign * (a.value < b.value ? -1 : 1);
      }
      return a.index - b.index;
    });
    return keyed.map((item) => item.row);
  }

  render() {
    this.page = Math.min(this.page, this.pages - 1);
    const start = this.page * this.pageSize;
    const visible = this.sorted().slice(start, start + this.pageSize);
    replace(
      this.body,
      visible.map((row) =>
        h(
          "tr",
          { dataset: { key: String(this.rowKey(row)) } },
          this.columns.map((column) => h(column.header ? "th" : "td", {
            class: column.numeric ? "num" : null,
            scope: column.header ? "row" : null,
          }, column.render(row))),
        ),
      ),
    );
    const end = Math.min(this.rows.length, start + this.pageSize);
    this.pageLabel.textContent = this.rows.length
      ? `Rows ${start + 1}–${end} of ${this.rows.length} · page ${this.page + 1} of ${this.pages}`
      : "No rows";
    this.prev.disabled = this.page === 0;
    this.next.disabled = this.page >= this.pages - 1;
  }
}
