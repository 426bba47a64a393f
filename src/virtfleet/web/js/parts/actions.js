// The power buttons of a VM, shown only to operators and admins, and only those its state allows.

import { del, post, seg } from "../api.js";
import { h } from "../dom.js";
import { track } from "../jobs.js";
import { showError } from "../notices.js";
import { can } from "../session.js";
import { confirmDialog } from "./dialog.js";

// The states each operation is allowed in (as the server's VmOperation rules say).
const ACTIONS = [
  { verb: "start", label: "Start", states: ["stopped", "crashed"] },
  { verb: "shutdown", label: "Shut down", states: ["running"] },
  { verb: "reboot", label: "Reboot", states: ["running"] },
  { verb: "pause", label: "Pause", states: ["running"] },
  { verb: "resume", label: "Resume", states: ["paused"] },
  { verb: "stop", label: "Force off", states: ["running", "paused", "starting", "stopping"] },
  { verb: "delete", label: "Delete", states: ["stopped", "crashed"], danger: true },
];

async function run(vm, action, buttons) {
  let submit;
  if (action.verb === "delete") {
    const answer = await confirmDialog({
      title: `Delete ${vm.name}?`,
      message: "The VM and its settings are removed. This cannot be undone.",
      confirmLabel: "Delete", danger: true, checkbox: "Also delete its volumes",
    });
    if (!answer.ok) return;
    submit = () => del(`/vms/${seg(vm.name)}`, { delete_volumes: answer.checked || undefined });
  } else {
    submit = () => post(`/vms/${seg(vm.name)}/${action.verb}`);
  }
  buttons.forEach((button) => { button.disabled = true; });
  try {
    await track(await submit(), `${action.label} ${vm.name}`);
  } catch (error) {
    showError(error, `${action.label} ${vm.name}`);
  } finally {
    buttons.forEach((button) => { button.disabled = false; });
  }
}

/** Whether `vm` in its state allows `verb` (a template only allows delete). */
export function allows(vm, verb) {
  const action = ACTIONS.find((candidate) => candidate.verb === verb);
  return Boolean(action) && action.states.includes(vm.state) && (!vm.template || verb === "delete");
}

/** The buttons for `vm` in its current state, or null for viewers (they may look, not touch). */
export function actionButtons(vm) {
  if (!can("operator")) return null;
  const allowed = ACTIONS.filter((action) => allows(vm, action.verb));
  const buttons = [];
  for (const action of allowed) {
    const button = h("button", {
      type: "button", class: action.danger ? "danger small" : "small", "data-action": action.verb, "data-key": action.verb,
      "aria-label": `${action.label} ${vm.name}`,
    }, action.label);
    button.addEventListener("click", () => run(vm, action, buttons));
    buttons.push(button);
  }
  return h("div", { class: "actions" }, buttons);
}
