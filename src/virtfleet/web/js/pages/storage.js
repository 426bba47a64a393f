// Storage pools and their volumes; operators create and delete volumes, admins create and delete pools.

import { del, get, post, seg } from "../api.js";
import { field, fill, h, row, section, select, table } from "../dom.js";
import { bytes } from "../format.js";
import { track } from "../jobs.js";
import { inlineError, showError } from "../notices.js";
import { confirmDialog } from "../parts/dialog.js";
import { can } from "../session.js";

const POOL_HEADERS = ["Pool", "Type", "Where", "State", "Used", "Actions"];
const VOLUME_HEADERS = ["Volume", "Format", "Size", "Template", "Based on", "Used by", "Actions"];

function usage(pool) {
  if (!pool.usage) return "–";
  const { capacity, allocation } = pool.usage;
  return h("div", { class: "usage" },
    h("meter", { min: 0, max: capacity, value: allocation, "aria-label": `${pool.name} used` }),
    ` ${bytes(allocation)} of ${bytes(capacity)}${pool.usage.thin ? " (thin)" : ""}`);
}

function deleteButton(label, onConfirm) {
  const button = h("button", { type: "button", class: "small danger", "aria-label": `Delete ${label}` }, "Delete");
  button.addEventListener("click", async () => {
    const answer = await confirmDialog({ title: `Delete ${label}?`, message: "Its data is gone for good.",
      confirmLabel: "Delete", danger: true });
    if (answer.ok) onConfirm();
  });
  return button;
}

export async function render(view, _args, scope) {
  const poolBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const volumeBox = h("div", {});
  const forms = h("div", { class: "columns" });
  view.append(h("h1", { tabindex: "-1" }, "Storage"), section("Pools", poolBox), section("Volumes", volumeBox), forms);
  let pools = [];

  const act = async (label, submit) => {
    try {
      const answer = await submit();
      if (answer && answer.status && answer.id) await track(answer, label);
    } catch (error) {
      showError(error, label);
    }
    load();
  };

  async function load() {
    try {
      const [poolList, volumes] = await Promise.all([get("/pools"), get("/volumes")]);
      pools = await Promise.all(poolList.map((p) => get(`/pools/${seg(p.name)}`).catch(() => p)));
      poolBox.replaceChildren(table("Storage pools", POOL_HEADERS, pools.map((p) => row(POOL_HEADERS, [
        p.name, p.spec.type, h("code", {}, p.spec.source || p.mount_path),
        [p.state, p.state_reason ? h("small", { class: "muted" }, ` ${p.state_reason}`) : null], usage(p),
        can("admin") ? deleteButton(`pool ${p.name}`, () => act(`delete pool ${p.name}`,
          () => del(`/pools/${seg(p.name)}`))) : "–",
      ]))));
      volumeBox.replaceChildren(table("Volumes", VOLUME_HEADERS, volumes.map((v) => row(VOLUME_HEADERS, [
        h("code", {}, `${v.pool}/${v.name}`), v.format, bytes(v.size), v.template ? "yes" : "no", v.base || "–",
        v.attached_to ? h("a", { href: `#/vms/${seg(v.attached_to)}` }, v.attached_to) : "–",
        can("operator") && !v.attached_to ? deleteButton(`volume ${v.pool}/${v.name}`, () => act(
          `delete volume ${v.pool}/${v.name}`, () => del(`/volumes/${seg(v.pool)}/${seg(v.name)}`))) : "–",
      ])), "No volumes."));
      drawForms();
    } catch (error) {
      poolBox.replaceChildren(h("p", { class: "inline-error" }, error.message));
    }
  }

  function drawForms() {
    fill(forms,
      can("operator") ? section("New volume", volumeForm(pools, act)) : null,
      can("admin") ? section("New pool", poolForm(act)) : null);
  }

  scope.on("job", (job) => {
    if (job.kind.startsWith("volume.") && (job.status === "succeeded" || job.status === "failed")) load();
  });
  scope.on("open", load);
  await load();
}

function volumeForm(pools, act) {
  const name = h("input", { name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,62}" });
  const pool = select("pool", pools.map((p) => p.name), pools[0]?.name);
  const format = select("format", ["qcow2", "raw"], "qcow2");
  const size = h("input", { name: "size", required: true, value: "1G" });
  const form = h("form", { "aria-label": "New volume" },
    h("div", { class: "inline" }, field("Pool", pool), field("Volume name", name)),
    h("div", { class: "inline" }, field("Format", format), field("Size", size, "bytes or with a unit: 512M, 10G")),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Create volume")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    inlineError(form, null);
    try {
      const ref = `${pool.value}/${name.value.trim()}`;
      const job = await post(`/pools/${seg(pool.value)}/volumes`,
        { name: name.value.trim(), format: format.value, size: size.value.trim() });
      form.reset();
      act(`create volume ${ref}`, async () => job);
    } catch (error) {
      inlineError(form, error);
    }
  });
  return form;
}

function poolForm(act) {
  const name = h("input", { name: "name", required: true });
  const type = select("type", ["dir", "lvm", "nfs"], "dir");
  const path = h("input", { name: "path", placeholder: "/srv/virtfleet/pool" });
  const source = h("input", { name: "source", placeholder: "VG/THINPOOL or HOST:/EXPORT" });
  const form = h("form", { "aria-label": "New pool" },
    h("div", { class: "inline" }, field("Pool name", name), field("Type", type)),
    field("Path", path, "dir: a directory; nfs: where to mount (optional)"),
    field("Source", source, "lvm: VG/THINPOOL; nfs: HOST:/EXPORT"),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Create pool")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    inlineError(form, null);
    const body = { name: name.value.trim(), type: type.value };
    if (path.value.trim()) body.path = path.value.trim();
    if (source.value.trim()) body.source = source.value.trim();
    try {
      await post("/pools", body);
      form.reset();
      act(`create pool ${body.name}`, async () => null);
    } catch (error) {
      inlineError(form, error);
    }
  });
  return form;
}
