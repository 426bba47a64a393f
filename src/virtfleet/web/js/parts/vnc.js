// The graphical console: noVNC's RFB client over the WebSocket /vms/{ref}/vnc (raw RFB in binary frames).

import { seg, wsUrl } from "../api.js";
import { h } from "../dom.js";
import { loadRfb } from "./vendor.js";

/** The graphical console section: {element, setState(state), dispose()}. */
export function graphicalConsole(vmName) {
  const status = h("p", { class: "console-status", role: "status" }, "Not connected.");
  const open = h("button", { type: "button", class: "primary" }, "Open graphical console");
  const cad = h("button", { type: "button", hidden: true }, "Send Ctrl-Alt-Del");
  const close = h("button", { type: "button", hidden: true }, "Disconnect");
  const screen = h("div", { class: "vnc-screen", hidden: true, "aria-label": `Display of ${vmName}` });
  const element = h("div", { class: "console" }, h("div", { class: "buttons" }, open, cad, close), status, screen);
  let rfb = null;
  let state = "stopped";
  const usable = () => state === "running" || state === "paused";

  const setStatus = (text, kind = "") => {
    status.textContent = text;
    status.className = `console-status ${kind}`;
  };
  const connected = (yes) => {
    cad.hidden = !yes;
    close.hidden = !yes;
    open.hidden = yes || !usable();
    open.disabled = false;
  };

  async function connect() {
    open.disabled = true;
    let RFB;
    try {
      RFB = await loadRfb();
    } catch (error) {
      setStatus(error.message, "inline-error");
      open.disabled = false;
      return;
    }
    screen.hidden = false;
    setStatus("Connecting…");
    rfb = new RFB(screen, wsUrl(`/vms/${seg(vmName)}/vnc`));
    rfb.scaleViewport = true;
    rfb.resizeSession = false;
    rfb.addEventListener("connect", () => {
      connected(true);
      setStatus("Connected. Keyboard and mouse go to the guest while the display has the focus.", "ok");
      rfb.focus();
    });
    rfb.addEventListener("disconnect", (event) => {
      rfb = null;
      connected(false);
      screen.hidden = true;
      setStatus(event.detail.clean ? "Disconnected." : "The display connection was refused or lost "
        + "(is the VM running with a display, and may your role open consoles?).", event.detail.clean ? "" : "inline-error");
    });
    rfb.addEventListener("securityfailure", (event) => setStatus(`VNC security failure: ${event.detail.reason}`,
      "inline-error"));
  }

  open.addEventListener("click", connect);
  cad.addEventListener("click", () => rfb?.sendCtrlAltDel());
  close.addEventListener("click", () => rfb?.disconnect());

  return {
    element,
    setState(newState) {
      state = newState;
      if (!rfb) open.hidden = !usable();
      if (!usable() && !rfb) setStatus(`The display opens while the VM runs (it is ${state}).`);
    },
    dispose() {
      rfb?.disconnect();
    },
  };
}
