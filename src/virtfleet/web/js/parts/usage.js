// A VM's CPU, memory, disk and network over the last hour, from GET /vms/{ref}/metrics.

import { get, seg } from "../api.js";
import { h } from "../dom.js";
import { bytes, percent, rate } from "../format.js";
import { lineChart } from "./chart.js";

const WINDOW_MS = 60 * 60 * 1000;
// Samples are not events: while the page is open and the VM runs, fetch the chart data again this often.
const REFRESH_MS = 15_000;

function draw(container, points) {
  const to = Date.now();
  const from = to - WINDOW_MS;
  const series = (label, key) => ({ label, points: points.map((p) => [Date.parse(p.time), p[key]]) });
  container.replaceChildren(
    lineChart({ title: "CPU", from, to, format: percent, series: [series("CPU", "cpu_percent")] }),
    lineChart({ title: "Memory", from, to, format: bytes, binary: true, series: [series("resident", "memory_bytes")] }),
    lineChart({ title: "Disk", from, to, format: rate, binary: true,
      series: [series("read", "disk_read_bps"), series("write", "disk_write_bps")] }),
    lineChart({ title: "Network", from, to, format: rate, binary: true,
      series: [series("received", "net_rx_bps"), series("sent", "net_tx_bps")] }));
  if (!points.length) {
    container.prepend(h("p", { class: "muted" }, "No samples in the last hour: usage is sampled while the VM runs."));
  }
}

/** The charts section; `isRunning()` says whether refreshing is worth it. Cleanups go to `scope`. */
export function usageCharts(vmName, scope, isRunning) {
  const container = h("div", { class: "charts" }, h("p", { class: "muted" }, "Loading usage…"));
  let failed = false;
  const load = async () => {
    try {
      draw(container, await get(`/vms/${seg(vmName)}/metrics`, { minutes: 60 }));
      failed = false;
    } catch (error) {
      if (!failed) container.replaceChildren(h("p", { class: "inline-error" }, `Usage: ${error.message}`));
      failed = true;
    }
  };
  load();
  const timer = setInterval(() => {
    if (document.visibilityState === "visible" && isRunning()) load();
  }, REFRESH_MS);
  scope.add(() => clearInterval(timer));
  return { element: container, reload: load };
}
