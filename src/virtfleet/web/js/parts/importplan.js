// The import page's parts: network map rows, the plan as a person reads it, an OVA upload with its progress, and
// refusals shown at the field they name.

import { ApiError, BASE, seg } from "../api.js";
import { field, h, row, table } from "../dom.js";
import { bytes, mib } from "../format.js";
import { session } from "../session.js";

/** A network map row: the source VM's network name (or "*" for any other) -> a virtfleet network. */
export function mapRow(networks) {
  return (n) => {
    const source = h("input", { name: "source_network", maxlength: 255, autocomplete: "off",
      placeholder: "VM Network, or * for any" });
    const network = select(networks, `target_network`);
    return {
      label: `network mapping ${n}`,
      element: h("div", { class: "inline" }, field(`Source network ${n}`, source), field(`Maps to ${n}`, network)),
      value: () => [source.value.trim(), network.value],
    };
  };
}

function select(networks, name) {
  return h("select", { name }, networks.map((net) => h("option", { value: net.name }, `${net.name} (${net.spec.mode})`)));
}

const DISK_HEADERS = ["Disk", "Source", "Source format", "Target", "Size"];
const NIC_HEADERS = ["Network card", "MAC", "Source network", "Network", "Model"];

function messages(title, items, kind) {
  if (!items.length) return null;
  return h("div", { class: `plan-${kind}` }, h("h3", {}, title), h("ul", {}, items.map((text) => h("li", {}, text))));
}

/** The plan of a dry run: what the VM will be, each disk and network card, what is not carried over, what blocks. */
export function planView(plan) {
  const cpus = plan.sockets > 1 ? `${plan.cpus} (${plan.sockets} sockets × ${plan.cores} cores)` : String(plan.cpus);
  const facts = [["VM name", plan.name], ["Source", `${plan.source} (${plan.kind})`], ["CPUs", cpus],
    ["Memory", mib(plan.memory_mib)], ["Firmware", plan.firmware], ["Machine", plan.machine],
    ["Guest", plan.guest_os || plan.guest_family]];
  return h("div", { class: "plan" },
    h("dl", { class: "facts" }, facts.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)])),
    h("h3", {}, "Disks"),
    table("Disks", DISK_HEADERS, plan.disks.map((disk) => row(DISK_HEADERS, [
      disk.label, [h("code", {}, disk.source), h("small", { class: "muted" }, ` ${disk.layout}`)], disk.source_format,
      `${disk.pool}/${disk.volume} (${disk.format})`, bytes(disk.size)])), "No disks."),
    h("h3", {}, "Network cards"),
    table("Network cards", NIC_HEADERS, plan.nics.map((nic) => row(NIC_HEADERS, [
      nic.label, nic.mac || "a new one", nic.source_network || "(none)",
      nic.network || h("strong", { class: "unmapped" }, "not mapped"), nic.model])), "No network cards."),
    messages("Problems: the import cannot run until they are solved", plan.problems, "problems"),
    messages("Warnings: not carried over, or changed", plan.warnings, "warnings"));
}

/** PUT `file` into the import directory's uploads/; `onProgress(fraction)` while it goes. Resolves with {path}. */
export function uploadOva(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest(); // fetch has no upload progress
    xhr.open("PUT", `${BASE}/imports/uploads/${seg(file.name)}`);
    xhr.setRequestHeader("Accept", "application/json");
    if (session.csrf) xhr.setRequestHeader("X-CSRF-Token", session.csrf);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = null;
      }
      if (xhr.status === 201) return resolve(data);
      const { code, message, ...details } = data?.error || { code: `http_${xhr.status}`, message: xhr.statusText };
      const already = xhr.status === 409 ? ` — import "uploads/${file.name}" by its path, or rename the file` : "";
      reject(new ApiError(xhr.status, code, `${message || `HTTP ${xhr.status}`}${already}`, { ...details, field: "file" }));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "network", "the upload did not reach the server",
      { field: "file" })));
    xhr.send(file);
  });
}

/** Show a refusal next to the control its `field` names (`controls[field]`), or at the top of `form`. */
export function markInvalid(form, controls, error) {
  for (const note of form.querySelectorAll(".field-error")) note.remove();
  for (const control of form.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
  form.querySelector(":scope > .inline-error")?.remove();
  if (!error) return;
  const fieldName = error.details?.field;
  const control = fieldName ? controls[fieldName.split(/[.[]/)[0]] : null;
  const code = error.code ? ` (${error.code})` : "";
  if (!control) {
    form.prepend(h("p", { class: "inline-error", role: "alert" }, `${error.message}${code}`));
    return;
  }
  const problem = error.details.problems?.[0]?.problem || error.message.replace(`${fieldName}: `, "");
  const note = h("small", { class: "field-error", id: `${control.id || "map"}-error`, role: "alert" }, problem);
  (control.closest(".field") || control).append(note);
  control.setAttribute("aria-invalid", "true");
  control.setAttribute("aria-errormessage", note.id);
  control.focus();
}
