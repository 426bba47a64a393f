// One VM: its spec, disks, NICs, usage charts, consoles, snapshots and event log; state follows the stream.

import { get, seg } from "../api.js";
import { append, badge, fill, h, row, section, table } from "../dom.js";
import { mib, time } from "../format.js";
import { notify, showError } from "../notices.js";
import { actionButtons } from "../parts/actions.js";
import { serialConsole } from "../parts/console.js";
import { eventLog } from "../parts/eventlog.js";
import { snapshots } from "../parts/snapshots.js";
import { usageCharts } from "../parts/usage.js";
import { graphicalConsole } from "../parts/vnc.js";
import { can } from "../session.js";

const DISK_HEADERS = ["Disk", "Format", "Bus", "Cache", "Read-only", "Boot order"];
const NIC_HEADERS = ["Network", "Model", "MAC", "Link", "IP address", "Port forwards"];

function overview(vm) {
  const spec = vm.spec;
  const items = [
    ["State", [badge(vm.state), vm.state_reason ? ` ${vm.state_reason}` : ""]],
    ["CPUs", spec.cpus], ["Memory", mib(spec.memory)], ["Machine", spec.machine],
    ["Acceleration", vm.accel ? `${spec.accel} (${vm.accel})` : spec.accel],
    ["Boots", spec.image ? `image ${spec.image}` : "from its disks"],
    ["Display", spec.display || "none"],
    ["Kernel arguments", spec.kernel_args || "–"],
    ["Cloud-init", spec.cloud_init ? "yes" : "no"],
    ["Host", vm.host], ["Template", vm.template ? "yes" : "no"],
    ["Created", time(vm.created_at)], ["ID", h("code", {}, vm.id)],
  ];
  return h("dl", { class: "facts" }, items.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

function disks(vm) {
  return table(`Disks of ${vm.name}`, DISK_HEADERS, vm.spec.disks.map((d) => row(DISK_HEADERS, [
    h("code", {}, d.volume || d.path), d.format, d.bus, d.cache, d.readonly ? "yes" : "no", d.boot_index ?? "–",
  ])), "No disks: it boots its image from memory.");
}

async function nics(vm, container) {
  if (!vm.spec.nics.length) {
    container.replaceChildren(h("p", { class: "muted" }, "No network cards."));
    return;
  }
  try {
    const list = await get(`/vms/${seg(vm.id)}/nics`);
    container.replaceChildren(table(`NICs of ${vm.name}`, NIC_HEADERS, list.map((n) => row(NIC_HEADERS, [
      n.network, n.model, h("code", {}, n.mac || "–"), n.link_up ? "up" : "down", n.ip || "–",
      n.forwards.join(", ") || "–",
    ]))));
  } catch (error) {
    container.replaceChildren(h("p", { class: "inline-error" }, error.message));
  }
}

export async function render(view, [name], scope) {
  let vm;
  try {
    vm = await get(`/vms/${seg(name)}`);
  } catch (error) {
    view.append(h("h1", { tabindex: "-1" }, name), h("p", { class: "inline-error" }, error.message),
      h("p", {}, h("a", { href: "#/vms" }, "Back to the VMs")));
    return;
  }
  const head = h("div", { class: "page-head" });
  const facts = h("div", {});
  const diskBox = h("div", {});
  const nicBox = h("div", {});
  const charts = usageCharts(vm.id, scope, () => vm.state === "running");
  const log = eventLog(vm, scope);
  const serial = can("operator") ? serialConsole(vm.name) : null;
  const display = can("operator") && vm.spec.display === "vnc" ? graphicalConsole(vm.name) : null;
  for (const part of [serial, display]) if (part) scope.add(() => part.dispose());

  const draw = () => {
    fill(head, h("h1", { tabindex: "-1" }, vm.name), badge(vm.state), actionButtons(vm));
    facts.replaceChildren(overview(vm));
    diskBox.replaceChildren(disks(vm));
    serial?.setState(vm.state);
    display?.setState(vm.state);
  };
  draw();
  nics(vm, nicBox);

  append(view, [
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/vms" }, "VMs"), " / ", vm.name),
    head,
    h("div", { class: "columns" },
      section("Overview", facts),
      section("Event log", log.element)),
    section("Usage (last hour)", charts.element),
    serial ? section("Serial console", serial.element) : null,
    display ? section("Graphical console", display.element) : null,
    h("div", { class: "columns" }, section("Disks", diskBox), section("Network cards", nicBox)),
    section("Snapshots", snapshots(vm, scope))]);

  async function refresh() {
    try {
      vm = await get(`/vms/${seg(vm.id)}`);
      draw();
      charts.reload();
      log.reload();
      nics(vm, nicBox);
    } catch (error) {
      if (error.status === 404) gone();
      else showError(error);
    }
  }
  let left = false;
  function gone() {
    if (left) return;
    left = true;
    notify(`VM ${vm.name} was deleted.`);
    location.hash = "#/vms";
  }
  scope.on("vm", (change) => {
    if (change.id === vm.id) refresh();
  });
  scope.on("job", (job) => {
    if (job.target === vm.id && (job.status === "succeeded" || job.status === "failed")) refresh();
  });
  scope.on("open", refresh);
  scope.on("vm-deleted", (deleted) => {
    if (deleted.id === vm.id) gone();
  });
}
