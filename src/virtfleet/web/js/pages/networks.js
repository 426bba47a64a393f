// Networks and their DHCP leases; admins create and delete them.

import { del, get, post, seg } from "../api.js";
import { field, h, row, section, select, table } from "../dom.js";
import { time } from "../format.js";
import { inlineError, showError } from "../notices.js";
import { confirmDialog } from "../parts/dialog.js";
import { can } from "../session.js";

const HEADERS = ["Network", "Mode", "Subnet", "DHCP range", "Bridge", "Actions"];
const LEASE_HEADERS = ["IP address", "MAC", "Host name", "Expires"];

function dhcpRange(spec) {
  if (!spec.subnet) return "–";
  return spec.dhcp_range || "upper half of the subnet";
}

export async function render(view, _args, scope) {
  const listBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const leaseBox = h("div", {});
  view.append(h("h1", { tabindex: "-1" }, "Networks"), section("Networks", listBox), leaseBox);
  if (can("admin")) view.append(section("New network", networkForm(() => load())));

  async function showLeases(network) {
    try {
      const leases = await get(`/networks/${seg(network.name)}/leases`);
      leaseBox.replaceChildren(section(`Leases of ${network.name}`, table(`DHCP leases of ${network.name}`,
        LEASE_HEADERS, leases.map((l) => row(LEASE_HEADERS, [l.ip, h("code", {}, l.mac), l.hostname || "–",
          time(l.expires)])), "No leases.")));
      leaseBox.querySelector("h2").setAttribute("tabindex", "-1");
      leaseBox.querySelector("h2").focus();
    } catch (error) {
      showError(error, `leases of ${network.name}`);
    }
  }

  function buttons(network) {
    const items = [];
    if (network.spec.mode === "nat" || network.spec.mode === "isolated") {
      const leases = h("button", { type: "button", class: "small", "aria-label": `Leases of ${network.name}` },
        "Leases");
      leases.addEventListener("click", () => showLeases(network));
      items.push(leases);
    }
    if (can("admin")) {
      const remove = h("button", { type: "button", class: "small danger", "aria-label": `Delete network ${network.name}` },
        "Delete");
      remove.addEventListener("click", async () => {
        const answer = await confirmDialog({ title: `Delete network ${network.name}?`, confirmLabel: "Delete",
          danger: true, message: "Its bridge, DHCP server and firewall rules are removed." });
        if (!answer.ok) return;
        try {
          await del(`/networks/${seg(network.name)}`);
        } catch (error) {
          showError(error, `delete network ${network.name}`);
        }
        load();
      });
      items.push(remove);
    }
    return items.length ? h("div", { class: "actions" }, items) : "–";
  }

  async function load() {
    try {
      const networks = await get("/networks");
      listBox.replaceChildren(table("Networks", HEADERS, networks.map((n) => row(HEADERS, [
        n.name, n.spec.mode + (n.spec.vlan ? ` (VLAN ${n.spec.vlan})` : ""), n.spec.subnet || "–",
        dhcpRange(n.spec), n.bridge ? h("code", {}, n.bridge) : "–", buttons(n),
      ])), "No networks."));
    } catch (error) {
      listBox.replaceChildren(h("p", { class: "inline-error" }, error.message));
    }
  }
  scope.on("open", load);
  await load();
}

function networkForm(onCreated) {
  const name = h("input", { name: "name", required: true });
  const mode = select("mode", [["nat", "nat (DHCP, out through the host)"], ["isolated", "isolated (DHCP, no way out)"],
    ["bridge", "bridge (an existing host bridge)"], ["user", "user (QEMU user mode)"]], "nat");
  const subnet = h("input", { name: "subnet", placeholder: "10.77.0.0/24" });
  const bridge = h("input", { name: "bridge", placeholder: "br0" });
  const subnetField = field("Subnet", subnet, "a private IPv4 range, /16 to /29");
  const bridgeField = field("Host bridge", bridge);
  const form = h("form", { "aria-label": "New network" },
    h("div", { class: "inline" }, field("Network name", name), field("Mode", mode)),
    subnetField, bridgeField,
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Create network")));
  const sync = () => {
    subnetField.hidden = !["nat", "isolated"].includes(mode.value);
    bridgeField.hidden = mode.value !== "bridge";
  };
  mode.addEventListener("change", sync);
  sync();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    inlineError(form, null);
    const body = { name: name.value.trim(), mode: mode.value };
    if (!subnetField.hidden) body.subnet = subnet.value.trim();
    if (!bridgeField.hidden) body.bridge = bridge.value.trim();
    try {
      await post("/networks", body);
      form.reset();
      sync();
      onCreated();
    } catch (error) {
      inlineError(form, error);
    }
  });
  return form;
}
