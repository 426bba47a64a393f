// Running and past jobs, with progress that moves as "job" messages arrive.

import { get, seg } from "../api.js";
import { h, row, section, table } from "../dom.js";
import { duration, time } from "../format.js";
import { showError } from "../notices.js";

const HEADERS = ["Job", "Target", "Status", "Progress", "Message", "Submitted", "Took"];
const SHOWN = 100;

function finished(job) {
  return job.status === "succeeded" || job.status === "failed";
}

export async function render(view, _args, scope) {
  const running = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const past = h("div", {});
  view.append(h("h1", { tabindex: "-1" }, "Jobs"), section("Running", running), section("Finished", past));
  const jobs = new Map();
  let vmNames = new Map();

  const target = (job) => {
    const name = vmNames.get(job.target);
    if (name) return h("a", { href: `#/vms/${seg(name)}` }, name);
    return job.target.replace(/^vm-name:/, "");
  };
  const jobRow = (job) => row(HEADERS, [
    h("code", { class: "nowrap" }, job.kind), target(job),
    h("span", { class: `badge job-${job.status}` }, job.status),
    h("progress", { max: 100, value: job.progress, "aria-label": `${job.kind} progress` }),
    job.error ? h("span", { class: "error-text" }, job.error) : job.message || "–",
    h("span", { class: "nowrap" }, time(job.created_at)),
    h("span", { class: "nowrap" }, duration(job.started_at, job.finished_at)),
  ], { "data-job": job.id });

  const draw = () => {
    const all = [...jobs.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
    running.replaceChildren(table("Running jobs", HEADERS, all.filter((j) => !finished(j)).map(jobRow),
      "Nothing running."));
    past.replaceChildren(table("Finished jobs", HEADERS, all.filter(finished).slice(0, SHOWN).map(jobRow),
      "No finished jobs."));
  };
  const load = async () => {
    try {
      const [list, vms] = await Promise.all([get("/jobs", { limit: SHOWN }), get("/vms").catch(() => [])]);
      vmNames = new Map(vms.map((vm) => [vm.id, vm.name]));
      jobs.clear();
      for (const job of list) jobs.set(job.id, job);
      draw();
    } catch (error) {
      showError(error, "list jobs");
    }
  };
  scope.on("job", (job) => {
    jobs.set(job.id, job);
    draw();
  });
  scope.on("vm", (vm) => vmNames.set(vm.id, vm.name));
  scope.on("open", load);
  await load();
}
