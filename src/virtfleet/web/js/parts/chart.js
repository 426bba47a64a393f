// A small line chart as inline SVG: one or two series over a fixed time window, no library.

import { h } from "../dom.js";

const NS = "http://www.w3.org/2000/svg";
const W = 360;
const H = 150;
const PAD = { left: 56, right: 8, top: 10, bottom: 22 };
const COLORS = ["#2563eb", "#d97706"];

function svg(tag, attrs = {}, ...children) {
  const element = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) element.setAttribute(key, String(value));
  for (const child of children) element.append(child);
  return element;
}

/** 0.73 -> 1, 4.2 -> 5, 1300 -> 2000: a round top for the y axis; binary: 300 MiB -> 512 MiB. */
function niceCeiling(value, binary) {
  if (!(value > 0)) return 1;
  if (binary && value >= 1) return 2 ** Math.ceil(Math.log2(value));
  const power = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 2.5, 5, 10].find((s) => s * power >= value);
  return step * power;
}

/** Points further apart than `gap` ms are not joined: the VM was off in between. */
function runs(points, gap) {
  const result = [];
  let current = [];
  for (const point of points) {
    if (current.length && point[0] - current[current.length - 1][0] > gap) {
      result.push(current);
      current = [];
    }
    current.push(point);
  }
  if (current.length) result.push(current);
  return result;
}

/**
 * series: [{label, points: [[timeMs, value], ...]}]; from/to: the window in ms; format: value -> text;
 * binary: the y axis tops at a power of two (bytes).
 * Returns a <figure> with the SVG and a legend that shows each series' latest value.
 */
export function lineChart({ title, series, from, to, format, gap = 60_000, binary = false }) {
  const max = niceCeiling(Math.max(0, ...series.flatMap((s) => s.points.map((p) => p[1]))), binary);
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const x = (t) => PAD.left + ((t - from) / (to - from)) * plotW;
  const y = (v) => PAD.top + plotH - (v / max) * plotH;

  const grid = [0, 0.5, 1].map((f) => svg("g", { class: "grid-line" },
    svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(max * f), y2: y(max * f) }),
    svg("text", { x: PAD.left - 4, y: y(max * f) + 4, "text-anchor": "end" }, format(max * f))));
  const minutes = Math.round((to - from) / 60_000);
  const ticks = [[from, `-${minutes} min`], [(from + to) / 2, `-${minutes / 2} min`], [to, "now"]].map(
    ([t, label], i) => svg("text", { x: x(t), y: H - 6, "text-anchor": ["start", "middle", "end"][i] }, label));
  const lines = series.flatMap((s, i) => runs(s.points, gap).map((run) => run.length === 1
    ? svg("circle", { cx: x(run[0][0]), cy: y(run[0][1]), r: 2, fill: COLORS[i] })
    : svg("polyline", {
      points: run.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" "),
      fill: "none", stroke: COLORS[i], "stroke-width": 1.5, "stroke-linejoin": "round",
    })));
  // The latest value as a dot: a VM that started a minute ago has a line too short to see in an hour's width.
  const last = series.flatMap((s, i) => {
    if (!s.points.length) return [];
    const [t, v] = s.points[s.points.length - 1];
    return [svg("circle", { cx: x(t), cy: y(v), r: 3, fill: COLORS[i], class: "last" })];
  });

  const latest = series.map((s) => (s.points.length ? format(s.points[s.points.length - 1][1]) : "no data"));
  const summary = `${title}: ${series.map((s, i) => `${s.label} ${latest[i]}`).join(", ")}`;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": summary, class: "chart" },
    svg("title", {}, summary), ...grid, ...ticks, ...lines, ...last);
  return h("figure", { class: "chart-box" },
    h("figcaption", {}, title),
    chart,
    h("ul", { class: "legend" }, series.map((s, i) => h("li", {},
      h("span", { class: "swatch", style: `background:${COLORS[i]}` }), `${s.label}: ${latest[i]}`))));
}
