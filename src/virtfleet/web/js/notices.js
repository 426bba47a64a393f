// Messages for the user: API errors (code and message as the server said them) and progress of submitted jobs.

import { h } from "./dom.js";

function region() {
  return document.getElementById("notices");
}

/** Show a message; errors stay until dismissed, other notices go away after a while. Returns the element. */
export function notify(text, kind = "info", { sticky = kind === "error" } = {}) {
  const message = h("span", { class: "notice-text" }, text);
  const close = h("button", { type: "button", class: "notice-close", "aria-label": "Dismiss" }, "×");
  const notice = h("div", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" },
    message, close);
  close.addEventListener("click", () => notice.remove());
  region().append(notice);
  if (!sticky) setTimeout(() => notice.remove(), 6000);
  return {
    element: notice,
    update(newText, newKind = kind) {
      message.textContent = newText;
      notice.className = `notice notice-${newKind}`;
      notice.setAttribute("role", newKind === "error" ? "alert" : "status");
    },
    remove() {
      notice.remove();
    },
    later(ms = 6000) {
      setTimeout(() => notice.remove(), ms);
    },
  };
}

export function showError(error, context) {
  const code = error && error.code ? ` (${error.code})` : "";
  const text = `${context ? `${context}: ` : ""}${error && error.message ? error.message : String(error)}${code}`;
  return notify(text, "error");
}

export function clearNotices() {
  region().replaceChildren();
}

/** On leaving a page: what went well needs no more reading; errors and running jobs stay. */
export function clearSuccesses() {
  for (const notice of region().querySelectorAll(".notice-success")) notice.remove();
}

/** An inline error in a form or section, replacing any previous one. */
export function inlineError(container, error) {
  container.querySelector(":scope > .inline-error")?.remove();
  if (!error) return;
  const code = error.code ? ` (${error.code})` : "";
  const message = h("p", { class: "inline-error", role: "alert" }, `${error.message}${code}`);
  const heading = container.querySelector(":scope > h1, :scope > h2");
  if (heading) heading.after(message);
  else container.prepend(message);
}
