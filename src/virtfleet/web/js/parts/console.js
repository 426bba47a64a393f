// The serial console in the browser: xterm.js over the WebSocket /vms/{ref}/console (binary frames both ways).

import { BASE, seg, wsUrl } from "../api.js";
import { h } from "../dom.js";
import { loadXterm } from "./vendor.js";

const CLOSE_REASONS = {
  4401: "You are not logged in any more.",
  4403: "Your role may not open consoles.",
  4404: "This VM is gone.",
  4409: "The console is not available",
};

const usable = (state) => state === "running" || state === "paused";

/** Bytes the history ends with and the live stream starts with are shown once, not twice. */
export function overlap(history, live) {
  for (let k = Math.min(history.length, live.length); k > 0; k -= 1) {
    let same = true;
    for (let i = 0; i < k && same; i += 1) same = history[history.length - k + i] === live[i];
    if (same) return k;
  }
  return 0;
}

/** The console section: {element, setState(state), dispose()}. Connects only when asked (it takes the console). */
export function serialConsole(vmName) {
  const status = h("p", { class: "console-status", role: "status" }, "Not connected.");
  const open = h("button", { type: "button", class: "primary" }, "Open console");
  const close = h("button", { type: "button", hidden: true }, "Disconnect");
  const screen = h("div", { class: "serial-screen", hidden: true, "aria-label": `Serial console of ${vmName}` });
  const element = h("div", { class: "console" }, h("div", { class: "buttons" }, open, close), status, screen);
  let socket = null;
  let terminal = null;
  let fit = null;
  let state = "stopped";
  const encoder = new TextEncoder();
  const onResize = () => fit?.fit();

  const setStatus = (text, kind = "") => {
    status.textContent = text;
    status.className = `console-status ${kind}`;
  };

  async function connect() {
    open.disabled = true;
    let xterm;
    try {
      xterm = await loadXterm();
    } catch (error) {
      setStatus(error.message, "inline-error");
      open.disabled = false;
      return;
    }
    if (!terminal) {
      terminal = new xterm.Terminal({ convertEol: true, cursorBlink: true, fontSize: 14, scrollback: 5000 });
      fit = new xterm.FitAddon();
      terminal.loadAddon(fit);
      screen.hidden = false;
      terminal.open(screen);
      terminal.onData((data) => {
        if (socket && socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
      });
      window.addEventListener("resize", onResize);
    }
    fit.fit();
    setStatus("Connecting…");
    attach();
  }

  function attach() {
    const ws = new WebSocket(wsUrl(`/vms/${seg(vmName)}/console`));
    ws.binaryType = "arraybuffer";
    socket = ws;
    let pending = []; // live bytes that arrive before the history is written
    let history = null;
    ws.onmessage = async (message) => {
      if (typeof message.data === "string") {
        const frame = JSON.parse(message.data);
        if (frame.type !== "attached") return;
        setStatus("Connected. Type here; what you type goes to the guest's serial port.", "ok");
        close.hidden = false;
        open.hidden = true;
        terminal.focus();
        // Show what the guest printed before we attached (its log), then the live bytes without repeats.
        history = new Uint8Array();
        try {
          const response = await fetch(`${BASE}/vms/${seg(vmName)}/logs`, { credentials: "same-origin" });
          if (response.ok) history = new Uint8Array(await response.arrayBuffer());
        } catch {
          // no history then: the live stream still works
        }
        if (socket !== ws) return;
        const live = concat(pending);
        pending = null;
        terminal.write(history);
        terminal.write(live.subarray(overlap(history, live)));
        return;
      }
      const bytes = new Uint8Array(message.data);
      if (pending) pending.push(bytes);
      else terminal.write(bytes);
    };
    ws.onclose = (event) => {
      if (socket === ws) socket = null;
      close.hidden = true;
      open.disabled = false;
      open.hidden = !usable(state);
      const known = CLOSE_REASONS[event.code];
      const reason = event.reason ? `: ${event.reason}` : "";
      if (event.code >= 4000) setStatus(`${known || "Console refused"}${reason} (${event.code})`, "inline-error");
      else setStatus(`Disconnected${reason}.`);
    };
  }

  function disconnect() {
    if (socket) socket.close(1000, "closed by the user");
  }

  open.addEventListener("click", connect);
  close.addEventListener("click", disconnect);

  function setState(newState) {
    state = newState;
    if (!socket) open.hidden = !usable(state);
    if (!usable(state) && !socket) setStatus(`The console opens while the VM runs (it is ${state}).`);
    else if (usable(state) && !socket && status.textContent.startsWith("The console opens")) setStatus("Not connected.");
  }

  return {
    element,
    setState,
    dispose() {
      window.removeEventListener("resize", onResize);
      disconnect();
      terminal?.dispose();
    },
  };
}

function concat(chunks) {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}
