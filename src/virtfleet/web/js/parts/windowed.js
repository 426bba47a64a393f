// A table that keeps only the rows in view (and a margin) in the DOM, so lists of 10,000 render at once: spacer
// rows stand for the rest. Still a real <table>: aria-rowcount says how many rows there are, aria-rowindex where
// each one shown sits, so screen readers count the whole list. Rows are keyed: one changed item rebuilds its own
// row only, and rows that stay are never moved (a moved node loses the keyboard focus).

import { h } from "../dom.js";

const MARGIN = 12; // rows rendered beyond each edge of the view

/** headers: the <th> elements; rowFor(item) -> <tr>; keyOf(item) -> a stable key. Items are replaced, never
 * changed in place: a new object for a key means a new row. */
export function windowedTable({ caption, headers, rowFor, keyOf, label }) {
  const topSpacer = spacer();
  const bottomSpacer = spacer();
  const body = h("tbody", {}, topSpacer, bottomSpacer);
  const table = h("table", { class: "grid", "aria-rowcount": 1 },
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", { "aria-rowindex": 1 }, headers)),
    body);
  // A scroll box of its own: the arrow keys scroll it, and its size is what "in view" means.
  const element = h("div", { class: "table-wrap windowed", role: "region", "aria-label": label, tabindex: "0" }, table);
  const rows = new Map(); // key -> {item, tr}
  let items = [];
  let rowHeight = 40; // measured from the rendered rows after each render
  let scheduled = false;

  function spacer() {
    return h("tr", { class: "spacer", "aria-hidden": "true" }, h("td", { colspan: headers.length }));
  }

  function rowOf(item) {
    const key = keyOf(item);
    let entry = rows.get(key);
    if (!entry || entry.item !== item) {
      const tr = rowFor(item);
      if (entry) replaceRow(entry.tr, tr);
      entry = { item, tr };
      rows.set(key, entry);
    }
    return entry.tr;
  }

  function render() {
    scheduled = false;
    const view = element.clientHeight || 600;
    const first = Math.max(0, Math.floor(element.scrollTop / rowHeight) - MARGIN);
    const last = Math.min(items.length, Math.ceil((element.scrollTop + view) / rowHeight) + MARGIN);
    const wanted = items.slice(first, last).map(rowOf);
    wanted.forEach((tr, i) => tr.setAttribute("aria-rowindex", first + i + 2)); // the header row is 1
    const keep = new Set(wanted);
    for (const [key, entry] of rows) {
      if (!keep.has(entry.tr)) {
        entry.tr.remove();
        rows.delete(key);
      }
    }
    let cursor = topSpacer.nextSibling;
    for (const tr of wanted) {
      if (tr === cursor) cursor = cursor.nextSibling;
      else body.insertBefore(tr, cursor);
    }
    topSpacer.firstChild.style.height = `${first * rowHeight}px`;
    bottomSpacer.firstChild.style.height = `${(items.length - last) * rowHeight}px`;
    table.setAttribute("aria-rowcount", items.length + 1);
    if (wanted.length) {
      const measured = (bottomSpacer.offsetTop - topSpacer.offsetTop - topSpacer.offsetHeight) / wanted.length;
      if (measured > 0 && Math.abs(measured - rowHeight) > 1) {
        rowHeight = measured;
        schedule(); // the spacers were sized with the old guess
      }
    }
  }

  function schedule() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(render);
  }

  element.addEventListener("scroll", schedule, { passive: true });
  // A row that takes the focus (Tab) is scrolled into view by the browser; the scroll event then renders more.
  window.addEventListener("resize", schedule);

  return {
    element,
    /** Show these items (already filtered and sorted), keeping the rows of unchanged ones. */
    setItems(next) {
      items = next;
      render();
    },
    /** Scroll to the top (e.g. after a new search: its first results are what is wanted). */
    toTop() {
      element.scrollTop = 0;
    },
    dispose() {
      window.removeEventListener("resize", schedule);
    },
  };
}

// A rebuilt row takes the place and the focus of its old one (the same control by data-key, else its first one).
function replaceRow(old, fresh) {
  const active = document.activeElement;
  const focused = active && old.contains(active);
  const key = focused ? active.dataset.key : null;
  if (old.isConnected) old.replaceWith(fresh);
  if (focused) ((key && fresh.querySelector(`[data-key="${key}"]`)) || fresh.querySelector("a, button, input"))?.focus();
}
