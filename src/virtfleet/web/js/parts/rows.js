// Repeating rows of the create form: disks (a new blank volume or an existing one) and network cards.

import { field, h, select } from "../dom.js";

/** A fieldset with an "Add" button that appends rows made by `makeRow`; `values()` reads every row. */
export function repeater(legend, addLabel, makeRow, unavailable = null) {
  const rows = h("div", { class: "rows" });
  const add = h("button", { type: "button", class: "small", disabled: Boolean(unavailable) }, addLabel);
  const element = h("fieldset", { class: "repeater" }, h("legend", {}, legend), rows, add,
    unavailable ? h("small", { class: "muted" }, ` ${unavailable}`) : null);
  const items = [];
  let counter = 0; // numbers are not reused after a removal: labels stay unique
  add.addEventListener("click", () => {
    counter += 1;
    const item = makeRow(counter);
    const remove = h("button", { type: "button", class: "small", "aria-label": `Remove ${item.label}` }, "Remove");
    const wrapper = h("div", { class: "row-item" }, item.element, remove);
    remove.addEventListener("click", () => {
      items.splice(items.indexOf(item), 1);
      wrapper.remove();
      add.focus();
    });
    items.push(item);
    rows.append(wrapper);
    wrapper.querySelector("select, input")?.focus();
  });
  return { element, values: () => items.map((item) => item.value()), items: () => [...items] };
}

/** A disk row. value(): {new: {pool, size, format, name?}, readonly} (a blank volume the server makes with the VM)
 * or {volume, readonly}; control(path) is the control a server error about `path` (e.g. "new.size") belongs to. */
export function diskRow(pools, volumes) {
  return (n) => {
    const free = volumes.filter((v) => !v.attached_to && !v.template);
    const source = select("disk_source", [["new", "New blank volume"],
      ...free.map((v) => [`vol:${v.pool}/${v.name}`, `${v.pool}/${v.name} (${v.format})`])], "new");
    const pool = select("pool", pools.map((p) => p.name), pools[0]?.name);
    const size = h("input", { type: "number", name: "size", min: 1, max: 65536, value: 1, step: 1 });
    const format = select("format", ["qcow2", "raw"], "qcow2");
    const name = h("input", { name: "volume_name", maxlength: 63, autocomplete: "off", placeholder: "VM name-diskN" });
    const readonly = h("input", { type: "checkbox", name: "readonly" });
    const newOnly = h("div", { class: "inline" }, field("Pool", pool), field("Size (GiB)", size), field("Format", format),
      field("Volume name", name));
    source.addEventListener("change", () => { newOnly.hidden = source.value !== "new"; });
    const element = h("div", { class: "inline" },
      field(`Disk ${n}`, source), newOnly,
      h("div", { class: "field check" }, h("label", {}, readonly, " Read-only")));
    const newControls = { "new.pool": pool, "new.size": size, "new.format": format, "new.name": name };
    return {
      label: `disk ${n}`,
      element,
      control: (path) => ({ readonly, ...(source.value === "new" ? newControls : {}) })[path] || source,
      value: () => {
        if (source.value !== "new") return { volume: source.value.slice(4), readonly: readonly.checked };
        const made = { pool: pool.value, size: `${Number(size.value)}G`, format: format.value };
        if (name.value.trim()) made.name = name.value.trim();
        return { new: made, readonly: readonly.checked };
      },
    };
  };
}

/** A NIC row. value(): {network, model}. */
export function nicRow(networks) {
  return (n) => {
    const network = select("network", networks.map((net) => [net.name, `${net.name} (${net.spec.mode})`]),
      networks[0]?.name);
    const model = select("model", ["virtio", "e1000"], "virtio");
    return {
      label: `network card ${n}`,
      element: h("div", { class: "inline" }, field(`Network card ${n}`, network), field("Model", model)),
      control: (path) => (path === "model" ? model : network),
      value: () => ({ network: network.value, model: model.value }),
    };
  };
}
