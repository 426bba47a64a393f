// The VM list: state, size and addresses of every VM, with its power buttons; rows follow the event stream.

import { get, seg } from "../api.js";
import { append, badge, h, row, table } from "../dom.js";
import { mib } from "../format.js";
import { showError } from "../notices.js";
import { actionButtons } from "../parts/actions.js";
import { can } from "../session.js";

const HEADERS = ["Name", "State", "CPUs", "Memory", "IP addresses", "Actions"];

async function addresses(vm) {
  if (!vm.spec.nics.length) return [];
  try {
    const nics = await get(`/vms/${seg(vm.name)}/nics`);
    return nics.map((nic) => nic.ip).filter(Boolean);
  } catch {
    return [];
  }
}

// The last addresses seen per VM id: a redraw shows them at once while they are asked for again.
const knownAddresses = new Map();

function vmRow(vm) {
  const shown = (list) => (list.length ? list.join(", ") : "–");
  const ips = h("span", { class: "ips" }, knownAddresses.has(vm.id) ? shown(knownAddresses.get(vm.id)) : "…");
  addresses(vm).then((list) => {
    knownAddresses.set(vm.id, list);
    ips.textContent = shown(list);
  });
  const name = h("a", { href: `#/vms/${seg(vm.name)}` }, vm.name);
  return row(HEADERS, [
    [name, vm.template ? h("span", { class: "tag" }, "template") : null],
    [badge(vm.state), vm.state_reason ? h("small", { class: "muted reason" }, ` ${vm.state_reason}`) : null],
    String(vm.spec.cpus),
    mib(vm.spec.memory),
    ips,
    actionButtons(vm) || h("span", { class: "muted" }, "–"),
  ], { "data-vm": vm.name });
}

export async function render(view, _args, scope) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  append(view, [
    h("div", { class: "page-head" },
      h("h1", { tabindex: "-1" }, "Virtual machines"),
      can("operator") ? h("a", { class: "button primary", href: "#/create" }, "Create VM") : null),
    body]);

  let list = [];
  const draw = () => {
    const sorted = [...list].sort((a, b) => a.name.localeCompare(b.name));
    body.replaceChildren(table("Virtual machines", HEADERS, sorted.map(vmRow),
      "No VMs yet." + (can("operator") ? " Create one with the button above." : "")));
  };
  const load = async () => {
    try {
      list = await get("/vms");
      draw();
    } catch (error) {
      showError(error, "list VMs");
    }
  };

  // A state change carries only id, name and state: refetch that VM (its spec may have changed too).
  const refreshOne = async (id) => {
    try {
      const fresh = await get(`/vms/${seg(id)}`);
      list = [...list.filter((vm) => vm.id !== fresh.id), fresh];
    } catch (error) {
      if (error.status !== 404) showError(error);
      list = list.filter((vm) => vm.id !== id);
    }
    draw();
  };
  scope.on("vm", (change) => refreshOne(change.id));
  // A finished job may have changed a VM that no "vm" message told us about (the stream may be down).
  scope.on("job", (job) => {
    const finished = job.status === "succeeded" || job.status === "failed";
    if (finished && list.some((vm) => vm.id === job.target)) refreshOne(job.target);
    else if (finished && job.kind === "vm.clone") load();
  });
  scope.on("vm-deleted", (gone) => {
    list = list.filter((vm) => vm.id !== gone.id);
    draw();
  });
  scope.on("open", load);
  await load();
}
