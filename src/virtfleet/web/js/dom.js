// Building DOM nodes without innerHTML: every string from the API goes in as text, never as markup.

const PROPERTIES = new Set(["value", "checked", "disabled", "hidden", "selected", "required", "multiple", "open"]);

/** h("button", {class: "x", onclick: fn}, "Label", child...) -> an element. */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2), value);
    } else if (PROPERTIES.has(key)) {
      element[key] = value;
    } else {
      element.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

export function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** Replace the children, skipping null/false ones (native replaceChildren would show them as "null"). */
export function fill(element, ...children) {
  element.replaceChildren();
  return append(element, children);
}

export function clear(element) {
  element.replaceChildren();
  return element;
}

/** A labelled form field: the label wraps nothing, it names the control by id (screen readers and tests). */
let fieldCounter = 0;
export function field(labelText, control, hint) {
  const id = control.id || `f${++fieldCounter}`;
  control.id = id;
  const hintId = hint ? `${id}-hint` : undefined;
  if (hintId) control.setAttribute("aria-describedby", hintId);
  return h("div", { class: "field" },
    h("label", { for: id }, labelText),
    control,
    hint ? h("small", { id: hintId, class: "muted" }, hint) : null);
}

export function select(name, options, value) {
  return h("select", { name },
    options.map((option) => {
      const [optionValue, text] = Array.isArray(option) ? option : [option, option];
      return h("option", { value: optionValue, selected: optionValue === value }, text);
    }));
}

export function section(title, ...children) {
  const id = `s-${title.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  return h("section", { class: "card", "aria-labelledby": id }, h("h2", { id }, title), children);
}

/** A table with a caption for screen readers; `data-label` lets narrow screens show cells as labelled rows. */
export function table(caption, headers, rows, emptyText = "None yet.") {
  if (rows.length === 0) return h("p", { class: "muted empty" }, emptyText);
  return h("div", { class: "table-wrap" },
    h("table", { class: "grid" },
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, headers.map((text) => h("th", { scope: "col" }, text)))),
      h("tbody", {}, rows)));
}

export function row(headers, cells, attrs = {}) {
  return h("tr", attrs, cells.map((cell, i) => h("td", { "data-label": headers[i] }, cell)));
}

export function badge(state) {
  return h("span", { class: `badge state-${state}` }, state);
}
