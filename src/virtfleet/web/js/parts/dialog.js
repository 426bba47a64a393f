// Modal dialogs (<dialog>: focus kept inside, Escape cancels) instead of window.confirm and window.prompt.

import { h } from "../dom.js";

function modal(title, body, confirmLabel, danger, initialFocus) {
  return new Promise((resolve) => {
    const ok = h("button", { type: "submit", class: danger ? "danger" : "primary", value: "ok" }, confirmLabel);
    const cancel = h("button", { type: "button" }, "Cancel");
    const dialog = h("dialog", { class: "confirm", "aria-labelledby": "dialog-title" },
      h("form", { method: "dialog" }, h("h2", { id: "dialog-title" }, title), body, h("div", { class: "buttons" }, cancel, ok)));
    cancel.addEventListener("click", () => dialog.close("cancel"));
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
    (initialFocus || cancel).focus(); // by default the safe choice has the focus
  });
}

/** Resolves with {ok, checked}; `checkbox` adds one labelled option (e.g. "also delete its volumes"). */
export async function confirmDialog({ title, message, confirmLabel = "OK", danger = false, checkbox = null }) {
  const option = checkbox ? h("input", { type: "checkbox", id: "dialog-option" }) : null;
  const body = [h("p", {}, message), option ? h("p", {}, h("label", { class: "check" }, option, " ", checkbox)) : null];
  const ok = await modal(title, body.filter(Boolean), confirmLabel, danger);
  return { ok, checked: option ? option.checked : false };
}

/** Ask for one value (e.g. a new password); resolves with it, or null when cancelled. */
export async function promptDialog({ title, label, type = "text", confirmLabel = "OK", minlength = 0 }) {
  const input = h("input", { id: "dialog-input", type, required: true, minlength, autocomplete: "new-password" });
  const body = h("div", { class: "field" }, h("label", { for: "dialog-input" }, label), input);
  const ok = await modal(title, body, confirmLabel, false, input);
  return ok ? input.value : null;
}
