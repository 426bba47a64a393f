// A confirmation dialog (<dialog>: modal, focus kept inside, Escape cancels) instead of window.confirm.

import { h } from "../dom.js";

/** Resolves with {ok, checked}; `checkbox` adds one labelled option (e.g. "also delete its volumes"). */
export function confirmDialog({ title, message, confirmLabel = "OK", danger = false, checkbox = null }) {
  return new Promise((resolve) => {
    const option = checkbox ? h("input", { type: "checkbox", id: "confirm-option" }) : null;
    const ok = h("button", { type: "submit", class: danger ? "danger" : "primary", value: "ok" }, confirmLabel);
    const cancel = h("button", { type: "button" }, "Cancel");
    const dialog = h("dialog", { class: "confirm", "aria-labelledby": "confirm-title" },
      h("form", { method: "dialog" },
        h("h2", { id: "confirm-title" }, title),
        h("p", {}, message),
        option ? h("p", {}, h("label", { class: "check" }, option, " ", checkbox)) : null,
        h("div", { class: "buttons" }, cancel, ok)));
    cancel.addEventListener("click", () => dialog.close("cancel"));
    dialog.addEventListener("close", () => {
      resolve({ ok: dialog.returnValue === "ok", checked: option ? option.checked : false });
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus(); // the safe choice has the focus
  });
}
