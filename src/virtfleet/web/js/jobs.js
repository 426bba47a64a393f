// Following submitted jobs: a notice per job that shows its progress live and how it ended.

import { get, seg } from "./api.js";
import { emitLocal, isLive, on } from "./events.js";
import { notify } from "./notices.js";

const tracked = new Map(); // job id -> {label, notice, resolve}

function describe(label, job) {
  if (job.status === "failed") return `${label} failed: ${job.error || job.message}`;
  if (job.status === "succeeded") return `${label}: done${job.message ? ` — ${job.message}` : ""}`;
  return `${label}: ${job.status} ${job.progress}%${job.message ? ` — ${job.message}` : ""}`;
}

function update(job) {
  const entry = tracked.get(job.id);
  if (!entry) return;
  const finished = job.status === "succeeded" || job.status === "failed";
  entry.notice.update(describe(entry.label, job), job.status === "failed" ? "error" : finished ? "success" : "info");
  if (!finished) return;
  tracked.delete(job.id);
  if (job.status === "succeeded") entry.notice.later(4000);
  entry.resolve(job);
}

on("job", update);

// What a GET told us goes to every "job" listener too, so pages refresh even while the stream is down.
function fetched(job) {
  const known = tracked.has(job.id);
  update(job);
  if (known) emitLocal("job", job);
}

// No replay on the stream: after a reconnect, ask for each job still followed.
on("open", () => {
  for (const id of tracked.keys()) get(`/jobs/${seg(id)}`).then(fetched, () => {});
});

/** Follow a job just submitted (the 202 answer); resolves with the finished job. */
export function track(job, label) {
  return new Promise((resolve) => {
    tracked.set(job.id, { label, resolve, notice: notify(describe(label, job), "info", { sticky: true }) });
    update(job);
    if (!tracked.has(job.id)) return;
    if (!isLive()) waitWithoutStream(job.id);
    // A quick job may have sent its last message before its 202 answer reached us: ask once.
    else get(`/jobs/${seg(job.id)}`).then(fetched, () => {});
  });
}

// Without the event stream, one long request per job (the server answers when the job ends), never a poll loop.
async function waitWithoutStream(id) {
  while (tracked.has(id)) {
    try {
      fetched(await get(`/jobs/${seg(id)}`, { wait: 120 }));
    } catch {
      return;
    }
  }
}
