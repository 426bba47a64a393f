// Creating a VM: from a guest image, from a template VM (a clone) or booting its own disks.

import { get, post, seg } from "../api.js";
import { field, h, select } from "../dom.js";
import { track } from "../jobs.js";
import { inlineError } from "../notices.js";
import { diskRow, nicRow, repeater } from "../parts/rows.js";
import { can } from "../session.js";

const NAME_PATTERN = "[A-Za-z0-9][A-Za-z0-9._\\-]{0,62}";

async function options() {
  const [images, vms, pools, volumes, networks] = await Promise.all(
    ["/images", "/vms", "/pools", "/volumes", "/networks"].map((path) => get(path).catch(() => [])));
  return { images: images.filter((i) => i.built), templates: vms.filter((v) => v.template), pools, volumes, networks };
}

function spec(form, disks, nics) {
  const value = (name) => form.elements[name].value.trim();
  const from = value("source");
  const result = {
    name: value("name"), cpus: Number(value("cpus")), memory: Number(value("memory")), machine: value("machine"),
    accel: value("accel"), image: from === "image" ? value("image") : null,
  };
  if (value("display") !== "none") result.display = value("display"); // sent only when asked for
  if (from === "image" && value("kernel_args")) result.kernel_args = value("kernel_args");
  result.nics = nics;
  const cloud = { hostname: value("ci_hostname") || null, user_data: form.elements.ci_user_data.value || null,
    ssh_keys: value("ci_keys").split("\n").map((k) => k.trim()).filter(Boolean) };
  if (cloud.hostname || cloud.user_data || cloud.ssh_keys.length) result.cloud_init = cloud;
  result.disks = disks;
  return result;
}

// Where a refusal belongs: the server names the field ("memory", "cloud_init.ssh_keys[0]", "disks[1].new.size"),
// the form shows the message next to the control that field came from.
const CLOUD_INIT = { hostname: "ci_hostname", user_data: "ci_user_data", ssh_keys: "ci_keys", ssh_key: "ci_keys" };

function controlFor(form, rows, fieldName) {
  const row = /^(disks|nics)\[(\d+)\](?:\.(.*))?$/.exec(fieldName);
  if (row) return rows[row[1]].items()[Number(row[2])]?.control(row[3] || "") || null;
  const [head, rest = ""] = fieldName.split(/\.(.*)/);
  const control = form.elements[head === "cloud_init" ? CLOUD_INIT[rest.split(/[.[]/)[0]] : head];
  return control instanceof Element ? control : null; // several controls share a name only inside rows
}

function markInvalid(form, rows, error) {
  for (const note of form.querySelectorAll(".field-error")) note.remove();
  for (const control of form.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
  const fieldName = error?.details?.field;
  const control = fieldName && controlFor(form, rows, fieldName);
  if (!control) return;
  const problem = error.details.problems?.[0]?.problem || error.message.replace(`${fieldName}: `, "");
  const note = h("small", { class: "field-error", id: `${control.id}-error` }, problem);
  (control.closest(".field") || control.parentElement).append(note);
  control.setAttribute("aria-invalid", "true");
  control.setAttribute("aria-errormessage", note.id);
  control.focus();
}

export async function render(view) {
  view.append(h("h1", { tabindex: "-1" }, "Create a VM"));
  if (!can("operator")) {
    view.append(h("p", { class: "inline-error" }, "Your role may look at VMs but not create them."));
    return;
  }
  const choices = await options();
  const sourceChoices = [["image", "A guest image"], ["disk", "Its own disk (q35)"]];
  if (choices.templates.length) sourceChoices.splice(1, 0, ["template", "A template VM (clone)"]);
  const source = select("source", sourceChoices, "image");
  const image = select("image", choices.images.map((i) => i.name), choices.images[0]?.name);
  const template = select("template", choices.templates.map((t) => t.name));
  const linked = h("input", { type: "checkbox", name: "linked", checked: true });
  const machine = select("machine", [["microvm", "microvm (fast, no PCI)"], ["q35", "q35 (PC with PCI)"]], "microvm");
  const display = select("display", [["none", "none (serial console only)"], ["vnc", "VNC (q35)"]], "none");
  const disks = repeater("Disks", "Add disk", diskRow(choices.pools, choices.volumes),
    choices.pools.length ? null : "No storage pool yet.");
  const nics = repeater("Network cards", "Add network card", nicRow(choices.networks),
    choices.networks.length ? null : "No network yet: an admin creates one on the Networks page.");
  const start = h("input", { type: "checkbox", name: "start", checked: true });
  const submit = h("button", { type: "submit", class: "primary" }, "Create VM");

  const imageBox = h("div", {}, field("Image", image, choices.images.length ? null
    : "No built image: build one on the Hosts page."),
  field("Kernel arguments", h("input", { name: "kernel_args", maxlength: 1024 }), "appended to the command line"));
  const templateBox = h("div", { hidden: true }, field("Template", template),
    h("div", { class: "field check" }, h("label", {}, linked, " Linked clone of its disks (instant)")));
  const specOnly = h("div", {},
    h("div", { class: "inline" }, field("Machine", machine), field("Acceleration", select("accel", ["auto", "kvm", "tcg"], "auto")),
      field("Display", display)),
    disks.element, nics.element,
    h("fieldset", {}, h("legend", {}, "Cloud-init"),
      field("Host name", h("input", { name: "ci_hostname", maxlength: 253 }), "default: the VM name"),
      field("User data", h("textarea", { name: "ci_user_data", rows: 5, spellcheck: false }),
        "#cloud-config or a #! script"),
      field("SSH keys", h("textarea", { name: "ci_keys", rows: 2, spellcheck: false }), "one per line")));
  const form = h("form", { class: "card create", novalidate: false },
    field("Name", h("input", { name: "name", required: true, pattern: NAME_PATTERN, maxlength: 63,
      autocomplete: "off" }), "letters, digits, '.', '_' or '-'"),
    field("Boot from", source), imageBox, templateBox,
    h("div", { class: "inline" },
      field("CPUs", h("input", { type: "number", name: "cpus", min: 1, max: 256, value: 1, required: true })),
      field("Memory (MiB)", h("input", { type: "number", name: "memory", min: 32, step: 32, value: 256, required: true }))),
    specOnly,
    h("div", { class: "field check" }, h("label", {}, start, " Start it now")),
    h("div", { class: "buttons" }, submit));

  const sync = () => {
    const from = source.value;
    imageBox.hidden = from !== "image";
    templateBox.hidden = from !== "template";
    specOnly.hidden = from === "template";
    if (from === "disk") machine.value = "q35";
    display.disabled = machine.value !== "q35";
    if (display.disabled) display.value = "none";
  };
  source.addEventListener("change", sync);
  machine.addEventListener("change", sync);
  sync();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    inlineError(form, null);
    submit.disabled = true;
    const name = form.elements.name.value.trim();
    try {
      if (source.value === "template") {
        const job = await track(await post(`/vms/${seg(template.value)}/clone`, {
          name, linked: linked.checked, cpus: Number(form.elements.cpus.value),
          memory: Number(form.elements.memory.value),
        }), `clone ${template.value} as ${name}`);
        if (job.status !== "succeeded") throw { message: job.error, code: job.error_code };
      } else {
        // One call: new disks are made by the server's create job with the VM, or nothing is made at all.
        const answer = await post("/vms", spec(form, disks.values(), nics.values()));
        if (answer.kind === "vm.create") {
          const job = await track(answer, `create ${name}`);
          if (job.status !== "succeeded") throw { message: job.error, code: job.error_code };
        }
      }
      if (start.checked) track(await post(`/vms/${seg(name)}/start`), `Start ${name}`);
      location.hash = `#/vms/${seg(name)}`;
    } catch (error) {
      inlineError(form, error);
      markInvalid(form, { disks, nics }, error);
      form.scrollIntoView({ block: "start" });
    } finally {
      submit.disabled = false;
    }
  });
  view.append(form);
}
