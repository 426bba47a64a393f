// One action on many VMs: one confirmation naming how many, a few at a time, and what failed VM by VM.

import { del, get, post, seg } from "../api.js";
import { h } from "../dom.js";
import { isLive, on } from "../events.js";
import { allows } from "./actions.js";
import { confirmDialog } from "./dialog.js";

// How many VMs are acted on at once: enough to keep the server busy, few enough not to flood it (or the browser,
// which refuses requests beyond its own limits).
const CONCURRENCY = 6;

export const BULK_ACTIONS = [
  { verb: "start", label: "Start", done: "started" },
  { verb: "shutdown", label: "Shut down", done: "shut down" },
  { verb: "stop", label: "Force off", done: "forced off" },
  { verb: "delete", label: "Delete", done: "deleted", danger: true },
];

const finished = (job) => job.status === "succeeded" || job.status === "failed";

// The job's end: from the event stream while it is up, else by long requests (the server answers when it ends).
function jobEnd(job) {
  if (finished(job)) return Promise.resolve(job);
  return new Promise((resolve) => {
    let settled = false;
    const settle = (seen) => {
      if (settled || seen.id !== job.id || !finished(seen)) return false;
      settled = true;
      off();
      resolve(seen);
      return true;
    };
    const off = on("job", settle);
    const ask = async () => {
      while (!settled) {
        try {
          // A quick job may have ended before we listened: ask once; without the stream, keep asking.
          if (settle(await get(`/jobs/${seg(job.id)}`, isLive() ? undefined : { wait: 120 })) || isLive()) return;
        } catch {
          return;
        }
      }
    };
    ask();
  });
}

function plural(count) {
  return `${count} VM${count === 1 ? "" : "s"}`;
}

/** Ask once, then run `action` on the selected VMs that allow it. report(text, failures) shows progress. */
export async function runBulk(action, selected, report) {
  const eligible = selected.filter((vm) => allows(vm, action.verb));
  const skipped = selected.length - eligible.length;
  const left = skipped ? ` ${plural(skipped)} of the ${selected.length} selected cannot be ${action.done} in their `
    + "state and are left out." : "";
  if (!eligible.length) {
    report(`${action.label}: none of the ${plural(selected.length)} selected can be ${action.done} now.`, []);
    return;
  }
  const answer = await confirmDialog({
    title: `${action.label} ${plural(eligible.length)}?`,
    message: (action.verb === "delete" ? "The VMs and their settings are removed. This cannot be undone." : "")
      + left,
    confirmLabel: `${action.label} ${plural(eligible.length)}`, danger: Boolean(action.danger),
    checkbox: action.verb === "delete" ? "Also delete their volumes" : null,
  });
  if (!answer.ok) return;
  const submit = (vm) => (action.verb === "delete"
    ? del(`/vms/${seg(vm.name)}`, { delete_volumes: answer.checked || undefined })
    : post(`/vms/${seg(vm.name)}/${action.verb}`));

  const failures = [];
  let done = 0;
  const show = () => report(`${action.label} ${plural(eligible.length)}: ${done} done, ${failures.length} failed`
    + `${done + failures.length < eligible.length ? "…" : "."}`, failures);
  show();
  const queue = [...eligible];
  const worker = async () => {
    for (let vm = queue.shift(); vm; vm = queue.shift()) {
      try {
        const job = await jobEnd(await submit(vm));
        if (job.status === "failed") failures.push({ name: vm.name, message: job.error || job.message });
        else done += 1;
      } catch (error) {
        failures.push({ name: vm.name, message: `${error.message}${error.code ? ` (${error.code})` : ""}` });
      }
      show();
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, queue.length) }, worker));
}

/** The region that shows how a bulk action goes: a line, then one line per VM that failed. */
export function bulkReport() {
  const line = h("p", {});
  const list = h("ul", { class: "bulk-failures" });
  const close = h("button", { type: "button", class: "small" }, "Dismiss");
  const element = h("div", { class: "bulk-report card", role: "status", hidden: true }, line, list, close);
  close.addEventListener("click", () => { element.hidden = true; });
  return {
    element,
    show(text, failures) {
      element.hidden = false;
      line.textContent = text;
      list.replaceChildren(...failures.map((failure) => h("li", {}, h("strong", {}, failure.name), `: ${failure.message}`)));
    },
  };
}
