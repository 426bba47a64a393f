// Importing a VM (VMware, OVF/OVA, Hyper-V, Xen, libvirt) from the server's import directory or an uploaded OVA:
// the plan first (a dry run), and Import only for exactly the inputs whose plan was shown without problems.

import { get, post, seg } from "../api.js";
import { field, fill, h, section, select } from "../dom.js";
import { track } from "../jobs.js";
import { markInvalid, mapRow, planView, uploadOva } from "../parts/importplan.js";
import { repeater } from "../parts/rows.js";
import { can } from "../session.js";

const NAME_PATTERN = "[A-Za-z0-9][A-Za-z0-9._\\-]{0,62}";

export async function render(view, _args, scope) {
  view.append(h("h1", { tabindex: "-1" }, "Import a VM"));
  if (!can("operator")) {
    view.append(h("p", { class: "inline-error" }, "Your role may look at VMs but not import them."));
    return;
  }
  const [pools, networks] = await Promise.all(["/pools", "/networks"].map((path) => get(path).catch(() => [])));
  const from = select("from", [["path", "A path in the server's import directory"],
    ["upload", "An .ova file from this computer"]], "path");
  const path = h("input", { name: "path", maxlength: 4096, autocomplete: "off", placeholder: "esx/web1/web1.vmx" });
  const file = h("input", { type: "file", name: "file", accept: ".ova" });
  const sent = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const pool = select("pool", pools.map((p) => p.name), pools.some((p) => p.name === "default") ? "default" : undefined);
  const format = select("format", ["qcow2", "raw"], "qcow2");
  const name = h("input", { name: "name", pattern: NAME_PATTERN, maxlength: 63, autocomplete: "off" });
  const map = repeater("Network map", "Add network mapping", mapRow(networks),
    networks.length ? null : "No network yet: an admin creates one on the Networks page.");
  const showPlan = h("button", { type: "submit" }, "Show plan");
  const importButton = h("button", { type: "button", class: "primary", disabled: true }, "Import");
  const pathBox = field("Path", path, "relative to the import directory: a .vmx, .ovf, .ova, .vmcx, xl.cfg, "
    + "libvirt XML or disk image");
  const fileBox = h("div", { hidden: true }, field("OVA file", file, "uploaded into the import directory's uploads/"),
    sent);
  const form = h("form", { class: "card create", "aria-label": "Import" },
    field("Import from", from), pathBox, fileBox,
    h("div", { class: "inline" }, field("Pool", pool), field("Disk format", format),
      field("VM name", name, "default: the source VM's name")),
    map.element, h("div", { class: "buttons" }, showPlan, importButton));
  const planBox = h("div", {});
  const result = h("div", {});
  view.append(form, planBox, result);
  // Where the server's error.field belongs; in upload mode the path is the upload's.
  const controls = () => ({ path: from.value === "upload" ? file : path, file, pool, format, name,
    network_map: map.element, nics: map.element, plan: planBox });

  let uploaded = null; // {id, path}: the file this page put into uploads/ (not sent twice)
  let planned = null; // key() of the inputs whose plan was shown without problems
  const fileId = () => { const f = file.files[0]; return f ? `${f.name}:${f.size}:${f.lastModified}` : null; };
  const key = () => JSON.stringify([from.value, from.value === "upload" ? fileId() : path.value.trim(), pool.value,
    format.value, name.value.trim(), map.values()]);
  const clearPlan = () => {
    planned = null;
    importButton.disabled = true;
    planBox.replaceChildren();
  };
  // Any change of the inputs makes the plan shown a plan of something else: it goes, and Import with it.
  const changed = () => { if (planBox.childElementCount && key() !== planned) clearPlan(); };
  for (const type of ["input", "change", "click"]) form.addEventListener(type, changed);
  from.addEventListener("change", () => {
    pathBox.hidden = from.value !== "path";
    fileBox.hidden = from.value !== "upload";
  });

  async function body() {
    let source = path.value.trim();
    if (from.value === "upload") {
      const chosen = file.files[0];
      if (!chosen) throw { message: "choose an .ova file to upload", details: { field: "file" } };
      if (uploaded?.id !== fileId()) {
        sent.hidden = false;
        sent.value = 0;
        uploaded = { id: fileId(), path: (await uploadOva(chosen, (done) => { sent.value = done; })).path };
        sent.value = 1;
      }
      source = uploaded.path;
    } else if (!source) {
      throw { message: "enter a path inside the import directory", details: { field: "path" } };
    }
    const request = { path: source, pool: pool.value, format: format.value,
      network_map: Object.fromEntries(map.values().filter(([network]) => network)) };
    if (name.value.trim()) request.name = name.value.trim();
    return request;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearPlan();
    markInvalid(form, controls(), null);
    showPlan.disabled = true;
    const asked = key();
    try {
      const plan = await post("/imports", { ...(await body()), dry_run: true });
      if (key() !== asked) return; // the inputs changed while the plan was made
      fill(planBox, section("Plan", planView(plan)));
      planned = plan.problems.length ? null : asked;
      importButton.disabled = planned === null;
    } catch (error) {
      markInvalid(form, controls(), error);
    } finally {
      showPlan.disabled = false;
    }
  });

  importButton.addEventListener("click", async () => {
    if (key() !== planned) return clearPlan();
    importButton.disabled = showPlan.disabled = true;
    markInvalid(form, controls(), null);
    try {
      const job = await post("/imports", await body());
      const bar = h("progress", { max: 100, value: job.progress, "aria-label": "Import progress" });
      const status = h("span", { role: "status" }, job.message || job.status);
      fill(result, section("Importing", h("p", {}, bar, " ", status)));
      scope.on("job", (update) => {
        if (update.id !== job.id) return;
        bar.value = update.progress;
        status.textContent = update.error || update.message || update.status;
      });
      const done = await track(job, `import ${job.target || "VM"}`);
      if (done.status !== "succeeded") throw { message: done.error, code: done.error_code, details: {} };
      const report = await get(`/imports/${seg(done.id)}`);
      clearPlan();
      fill(result, section("Imported",
        h("p", {}, "Made the VM ", h("a", { href: `#/vms/${seg(report.vm)}` }, report.vm), " with ",
          report.disks.map((disk) => `${disk.volume} (${disk.format})`).join(", "), "."),
        report.warnings.length ? [h("h3", {}, "Not carried over, or changed"),
          h("ul", {}, report.warnings.map((text) => h("li", {}, text)))] : null));
    } catch (error) {
      markInvalid(form, controls(), error);
      importButton.disabled = key() !== planned;
    } finally {
      showPlan.disabled = false;
    }
  });
}
