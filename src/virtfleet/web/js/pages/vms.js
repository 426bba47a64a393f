// The VM list, built for fleets: one GET /vms (addresses included), only the rows in view in the DOM, search,
// sort by any column, bulk actions. A state change costs one request for that VM (two with NICs), never a redraw
// of every row: events update the row of their VM only.

import { get, seg } from "../api.js";
import { append, badge, h } from "../dom.js";
import { mib } from "../format.js";
import { showError } from "../notices.js";
import { actionButtons } from "../parts/actions.js";
import { BULK_ACTIONS, bulkReport, runBulk } from "../parts/bulk.js";
import { parseQuery, QueryError } from "../parts/query.js";
import { windowedTable } from "../parts/windowed.js";
import { can } from "../session.js";

const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
const ipKey = (vm) => (vm.addresses?.[0] || "").split(".").map((part) => part.padStart(3, "0")).join(".");
const shown = (list) => (list && list.length ? list.join(", ") : "–");

// The data columns: their header, how a row shows them, how they sort.
const COLUMNS = [
  { key: "name", label: "Name", compare: (a, b) => collator.compare(a.name, b.name),
    cell: (vm) => [h("a", { href: `#/vms/${seg(vm.name)}`, "data-key": "link" }, vm.name),
      vm.template ? h("span", { class: "tag" }, "template") : null] },
  { key: "state", label: "State", compare: (a, b) => a.state.localeCompare(b.state),
    cell: (vm) => [badge(vm.state), vm.state_reason ? h("small", { class: "muted reason", title: vm.state_reason },
      ` ${vm.state_reason}`) : null] },
  { key: "cpus", label: "CPUs", compare: (a, b) => a.spec.cpus - b.spec.cpus, cell: (vm) => String(vm.spec.cpus) },
  { key: "memory", label: "Memory", compare: (a, b) => a.spec.memory - b.spec.memory, cell: (vm) => mib(vm.spec.memory) },
  { key: "ip", label: "IP addresses", compare: (a, b) => ipKey(a).localeCompare(ipKey(b)),
    cell: (vm) => h("span", { class: "ips" }, shown(vm.addresses)) },
  { key: "host", label: "Host", compare: (a, b) => collator.compare(a.host, b.host), cell: (vm) => vm.host },
];
const BY_NAME = COLUMNS[0].compare;
// More changed VMs than this within one flush: one GET of the whole list is cheaper than one GET each.
const RELOAD_OVER = 40;
const FLUSH_MS = 80; // events of one change (state, job end) arrive together: one request answers them all
const ADDRESS_RETRIES = [3000, 10000, 30000]; // a started VM gets its DHCP lease a little later: ask a few times

export async function render(view, _args, scope) {
  const operator = can("operator");
  const byId = new Map(); // id -> VM (with addresses); replaced, never changed in place (rows are keyed on it)
  const selected = new Set(); // ids
  let predicate = () => true;
  let sort = { key: "name", direction: 1 };
  let matching = [];
  let loaded = false;

  // --- the search box, the count, the bulk bar ------------------------------------------------------------
  const search = h("input", { type: "search", id: "vm-search", autocomplete: "off", spellcheck: "false",
    placeholder: "state:running name:web* 10.0.", "aria-describedby": "vm-search-help vm-search-error" });
  const searchError = h("p", { id: "vm-search-error", class: "error-text", role: "alert" });
  const count = h("p", { class: "count", role: "status" });
  const report = bulkReport();
  const selectedText = h("span", { class: "muted" });
  const bulkButtons = BULK_ACTIONS.map((action) => {
    const button = h("button", { type: "button", class: action.danger ? "danger small" : "small", disabled: true },
      `${action.label}…`);
    button.addEventListener("click", () => runBulk(action, [...selected].map((id) => byId.get(id)).filter(Boolean),
      report.show));
    return button;
  });
  const clearSelection = h("button", { type: "button", class: "small", disabled: true }, "Clear selection");
  clearSelection.addEventListener("click", () => { selected.clear(); redrawAll(); });
  const bulkBar = operator ? h("div", { class: "bulk-bar", role: "group", "aria-label": "Selected VMs" },
    selectedText, bulkButtons, clearSelection) : null;

  // --- the table ----------------------------------------------------------------------------------------
  const selectAll = h("input", { type: "checkbox", "aria-label": "Select all matching VMs" });
  selectAll.addEventListener("change", () => {
    for (const vm of matching) {
      if (selectAll.checked) selected.add(vm.id);
      else selected.delete(vm.id);
    }
    redrawAll();
  });
  const sortHeaders = COLUMNS.map((column) => {
    const button = h("button", { type: "button", class: "sort" }, column.label);
    const th = h("th", { scope: "col", "data-sort": column.key }, button);
    button.addEventListener("click", () => {
      sort = { key: column.key, direction: sort.key === column.key ? -sort.direction : 1 };
      refilter(true); // the first rows of the new order are what is wanted
    });
    return th;
  });
  const headers = [operator ? h("th", { scope: "col", class: "select" }, selectAll) : null, ...sortHeaders,
    h("th", { scope: "col" }, "Actions")].filter(Boolean);

  const rowFor = (vm) => {
    const cells = COLUMNS.map((column) => h("td", { "data-label": column.label }, column.cell(vm)));
    const box = operator ? h("input", { type: "checkbox", "data-key": "select", "aria-label": `Select ${vm.name}`,
      checked: selected.has(vm.id) }) : null;
    box?.addEventListener("change", () => {
      if (box.checked) selected.add(vm.id);
      else selected.delete(vm.id);
      updateSelection();
    });
    return h("tr", { "data-vm": vm.name },
      box ? h("td", { class: "select" }, box) : null, cells,
      h("td", { "data-label": "Actions" }, actionButtons(vm) || h("span", { class: "muted" }, "–")));
  };
  const grid = windowedTable({ caption: "Virtual machines", label: "Virtual machines, scrollable", headers, rowFor,
    keyOf: (vm) => vm.id });
  const empty = h("p", { class: "muted empty" });

  append(view, [
    h("div", { class: "page-head" },
      h("h1", { tabindex: "-1" }, "Virtual machines"),
      operator ? h("a", { class: "button primary", href: "#/create" }, "Create VM") : null),
    h("div", { class: "list-tools" },
      h("div", { class: "field search" }, h("label", { for: "vm-search" }, "Search VMs"), search,
        h("small", { id: "vm-search-help", class: "muted" },
          "Words match a name or IP; or name:web*, state:running, ip:10.0., host:NAME; all terms must match."),
        searchError),
      count),
    bulkBar, report.element, h("p", { class: "muted loading" }, "Loading…"), empty, grid.element]);
  const loading = view.querySelector(".loading");
  grid.element.hidden = true;

  // --- what is shown ------------------------------------------------------------------------------------
  function updateSelection() {
    for (const id of selected) if (!byId.has(id)) selected.delete(id);
    const chosen = matching.filter((vm) => selected.has(vm.id)).length;
    selectAll.checked = matching.length > 0 && chosen === matching.length;
    selectAll.indeterminate = chosen > 0 && chosen < matching.length;
    selectedText.textContent = `${selected.size} selected`;
    for (const button of [...bulkButtons, clearSelection]) button.disabled = selected.size === 0;
  }

  // Rows are keyed on the VM object: a new object for every VM whose checkbox must change redraws those rows.
  function redrawAll() {
    for (const [id, vm] of byId) byId.set(id, { ...vm });
    refilter(false);
  }

  const order = () => {
    const column = COLUMNS.find((candidate) => candidate.key === sort.key);
    return (a, b) => sort.direction * column.compare(a, b) || BY_NAME(a, b);
  };

  // Everything again: after a load, a new search or sort (10,000 VMs: a few tens of ms).
  function refilter(toTop = false) {
    changes.clear();
    matching = [...byId.values()].filter(predicate).sort(order());
    for (const th of sortHeaders) {
      if (th.dataset.sort === sort.key) th.setAttribute("aria-sort", sort.direction > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
    if (toTop) grid.toTop();
    show();
  }

  function show() {
    grid.element.hidden = byId.size === 0;
    empty.hidden = matching.length > 0 || !loaded;
    empty.textContent = byId.size === 0 ? `No VMs yet.${operator ? " Create one with the button above." : ""}`
      : "No VM matches the search.";
    grid.setItems(matching);
    const counted = `${matching.length} of ${byId.size} VMs`;
    if (count.textContent !== counted) count.textContent = counted; // a status region: say it only when it changes
    updateSelection();
  }

  // A few VMs changed: each leaves its place and, if it still matches, goes to its new one (a binary search), so
  // a state change costs no filtering or sorting of the whole list. Many at once: everything again.
  const changes = new Map(); // id -> the VM object `matching` had before the first of its changes
  let frame = 0;
  function put(id, vm) {
    if (!changes.has(id)) changes.set(id, byId.get(id));
    if (vm) byId.set(id, vm);
    else byId.delete(id);
    if (!frame) frame = requestAnimationFrame(placeChanges);
  }
  function placeChanges() {
    frame = 0;
    if (changes.size > RELOAD_OVER) {
      refilter();
      return;
    }
    const compare = order();
    for (const [id, before] of changes) {
      const at = before ? matching.indexOf(before) : -1;
      if (at >= 0) matching.splice(at, 1);
      const now = byId.get(id);
      if (!now || !predicate(now)) continue;
      let low = 0;
      let high = matching.length;
      while (low < high) {
        const middle = (low + high) >> 1;
        if (compare(matching[middle], now) <= 0) low = middle + 1;
        else high = middle;
      }
      matching.splice(low, 0, now);
    }
    changes.clear();
    show();
  }
  scope.add(() => { cancelAnimationFrame(frame); grid.dispose(); });

  let typing = 0;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(applySearch, 120);
  });
  function applySearch() {
    try {
      predicate = parseQuery(search.value);
      searchError.textContent = "";
      search.removeAttribute("aria-invalid");
    } catch (error) {
      if (!(error instanceof QueryError)) throw error;
      searchError.textContent = error.message; // the last good search stays shown
      search.setAttribute("aria-invalid", "true");
      return;
    }
    refilter(true);
  }

  // --- talking to the server ----------------------------------------------------------------------------
  // The networks whose NICs get addresses from our DHCP (nat, isolated): only their NICs are asked about.
  let dhcpNetworks = new Set();
  const leased = (vm) => vm.spec.nics.some((nic) => dhcpNetworks.has(nic.network));
  const load = async () => {
    try {
      const [list, networks] = await Promise.all([get("/vms"), get("/networks")]);
      dhcpNetworks = new Set(networks.filter((net) => ["nat", "isolated"].includes(net.spec.mode)).map((net) => net.name));
      byId.clear();
      for (const vm of list) byId.set(vm.id, vm);
      loaded = true;
      loading.remove();
      refilter();
    } catch (error) {
      showError(error, "list VMs");
    }
  };

  // Ids whose VM changed; fetched together a moment later. fetching: ids asked for right now.
  const pending = new Set();
  const fetching = new Set();
  const retries = new Map(); // id -> how many address retries are left
  let flushTimer = 0;
  const changed = (id) => {
    pending.add(id);
    if (!flushTimer) flushTimer = setTimeout(flush, FLUSH_MS);
  };
  scope.add(() => clearTimeout(flushTimer));
  function flush() {
    flushTimer = 0;
    const ids = [...pending].filter((id) => !fetching.has(id)); // the others go once their answer is in
    if (ids.length > RELOAD_OVER) {
      pending.clear();
      load();
      return;
    }
    for (const id of ids) {
      pending.delete(id);
      refreshOne(id);
    }
  }

  async function refreshOne(id) {
    fetching.add(id);
    try {
      const fresh = await get(`/vms/${seg(id)}`);
      const known = byId.get(id);
      const addresses = leased(fresh) ? await nicAddresses(fresh, known?.addresses || []) : [];
      put(fresh.id, { ...fresh, addresses });
      followAddresses(fresh, addresses);
    } catch (error) {
      if (error.status === 404) put(id, null); // deleted meanwhile
      else showError(error, "refresh a VM");
    } finally {
      fetching.delete(id);
      if (pending.size && !flushTimer) flushTimer = setTimeout(flush, FLUSH_MS);
    }
  }

  async function nicAddresses(vm, fallback) {
    try {
      return (await get(`/vms/${seg(vm.id)}/nics`)).map((nic) => nic.ip).filter(Boolean);
    } catch {
      return fallback;
    }
  }

  // A VM just started has no lease yet and no event will say when it gets one: ask again a few times, then stop.
  function followAddresses(vm, addresses) {
    const waiting = vm.state === "running" && leased(vm) && addresses.length === 0;
    if (!waiting) {
      retries.set(vm.id, ADDRESS_RETRIES.length);
      return;
    }
    const left = retries.get(vm.id) ?? ADDRESS_RETRIES.length;
    if (left === 0) return;
    retries.set(vm.id, left - 1);
    const timer = setTimeout(async () => {
      const current = byId.get(vm.id);
      if (!current || current.state !== "running") return;
      const found = await nicAddresses(current, current.addresses);
      if (byId.get(vm.id) !== current) return; // changed meanwhile: that change asked for itself
      const updated = { ...current, addresses: found };
      put(vm.id, updated);
      followAddresses(updated, found);
    }, ADDRESS_RETRIES[ADDRESS_RETRIES.length - left]);
    scope.add(() => clearTimeout(timer));
  }

  scope.on("vm", (change) => {
    // Show the new state at once (the event says it); the VM's other fields come with the one GET that follows.
    const known = byId.get(change.id);
    if (known) {
      put(change.id, { ...known, state: change.state, state_reason: change.reason ?? known.state_reason });
    }
    changed(change.id);
  });
  // A finished job may have changed a VM that no "vm" message told us about (the stream may be down).
  scope.on("job", (job) => {
    const finished = job.status === "succeeded" || job.status === "failed";
    if (finished && byId.has(job.target)) changed(job.target);
    else if (finished && job.kind === "vm.clone") load();
  });
  scope.on("vm-deleted", (gone) => {
    if (byId.has(gone.id)) put(gone.id, null);
  });
  scope.on("open", () => { if (loaded) load(); });
  await load();
}
