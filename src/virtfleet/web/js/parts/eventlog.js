// A VM's event log (newest first), growing live from "vm-event" messages.

import { get, seg } from "../api.js";
import { h } from "../dom.js";
import { time } from "../format.js";

const SHOWN = 100;

/** {element, reload}: reload after a job ends, in case the stream is down and told us nothing. */
export function eventLog(vm, scope) {
  const list = h("ol", { class: "events", reversed: true }, h("li", { class: "muted" }, "Loading…"));
  let events = [];
  const draw = () => {
    const newest = [...events].sort((a, b) => b.id - a.id).slice(0, SHOWN);
    list.replaceChildren(...(newest.length ? newest.map((e) => h("li", {},
      h("time", { datetime: e.time }, time(e.time)), " ",
      h("span", { class: `kind kind-${e.kind}` }, e.kind), " ",
      h("span", {}, e.message))) : [h("li", { class: "muted" }, "No events yet.")]));
  };
  const load = async () => {
    try {
      events = await get(`/vms/${seg(vm.id)}/events`, { limit: SHOWN });
      draw();
    } catch (error) {
      list.replaceChildren(h("li", { class: "inline-error" }, error.message));
    }
  };
  scope.on("vm-event", (event) => {
    if (event.vm_id !== vm.id || events.some((e) => e.id === event.id)) return;
    events.push(event);
    draw();
  });
  scope.on("open", load);
  load();
  return { element: list, reload: load };
}
