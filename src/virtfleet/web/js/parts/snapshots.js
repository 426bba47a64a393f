// A VM's snapshots: the list, and for operators taking, reverting and deleting them.

import { del, get, post, seg } from "../api.js";
import { field, h, row, table } from "../dom.js";
import { time } from "../format.js";
import { track } from "../jobs.js";
import { inlineError, showError } from "../notices.js";
import { can } from "../session.js";
import { confirmDialog } from "./dialog.js";

const HEADERS = ["Name", "Kind", "Taken", "VM was", "Parent", "Description", "Actions"];

export function snapshots(vm, scope) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const element = h("div", {}, body);
  const base = `/vms/${seg(vm.id)}/snapshots`;

  const run = async (label, submit) => {
    try {
      await track(await submit(), label);
    } catch (error) {
      showError(error, label);
    }
    load();
  };

  const buttons = (snapshot) => {
    if (!can("operator")) return "–";
    const revert = h("button", { type: "button", class: "small", "aria-label": `Revert to ${snapshot.name}` }, "Revert");
    const remove = h("button", { type: "button", class: "small danger", "aria-label": `Delete snapshot ${snapshot.name}` },
      "Delete");
    revert.addEventListener("click", () => run(`revert ${vm.name} to ${snapshot.name}`,
      () => post(`${base}/${seg(snapshot.name)}/revert`)));
    remove.addEventListener("click", async () => {
      const answer = await confirmDialog({ title: `Delete snapshot ${snapshot.name}?`, confirmLabel: "Delete",
        danger: true, message: "Its changes are merged into the image below it." });
      if (answer.ok) run(`delete snapshot ${snapshot.name}`, () => del(`${base}/${seg(snapshot.name)}`));
    });
    return h("div", { class: "actions" }, revert, remove);
  };

  async function load() {
    try {
      const list = await get(base);
      body.replaceChildren(table(`Snapshots of ${vm.name}`, HEADERS, list.map((s) => row(HEADERS, [
        [s.name, s.current ? h("span", { class: "tag" }, "current") : null],
        s.kind, time(s.created_at), s.vm_state, s.parent || "–", s.description || "–", buttons(s),
      ])), "No snapshots."));
    } catch (error) {
      body.replaceChildren(h("p", { class: "inline-error" }, error.message));
    }
  }

  if (can("operator")) element.append(createForm(vm, base, run));
  scope.on("open", load);
  load();
  return element;
}

function createForm(vm, base, run) {
  const name = h("input", { name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,62}" });
  const memory = h("input", { type: "checkbox", name: "memory" });
  const description = h("input", { name: "description", maxlength: 1024 });
  const form = h("form", { class: "inline-form", "aria-label": "Take a snapshot" },
    field("Snapshot name", name),
    field("Description", description),
    h("div", { class: "field check" }, h("label", {}, memory, " With memory (running VM)")),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Take snapshot")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    inlineError(form, null);
    const body = { name: name.value.trim(), memory: memory.checked, description: description.value };
    await run(`snapshot ${vm.name} as ${body.name}`, () => post(base, body));
    form.reset();
  });
  return form;
}
