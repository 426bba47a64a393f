// The single-page app: who is logged in, the header, and a hash router that shows one page at a time.

import { onUnauthenticated, post, request } from "./js/api.js";
import { clear, h } from "./js/dom.js";
import * as events from "./js/events.js";
import { clearNotices, clearSuccesses, notify, showError } from "./js/notices.js";
import * as create from "./js/pages/create.js";
import * as hosts from "./js/pages/hosts.js";
import * as importPage from "./js/pages/import.js";
import * as jobs from "./js/pages/jobs.js";
import * as login from "./js/pages/login.js";
import * as networks from "./js/pages/networks.js";
import * as storage from "./js/pages/storage.js";
import * as tokens from "./js/pages/tokens.js";
import * as users from "./js/pages/users.js";
import * as vm from "./js/pages/vm.js";
import * as vms from "./js/pages/vms.js";
import { can, session, setSession } from "./js/session.js";

// "#/vms/web1" -> page "vms" with args ["web1"], which the VM page shows.
const PAGES = { login, vms, create, import: importPage, hosts, storage, networks, jobs, tokens, users };
const LIVE_TEXT = { live: "live", reconnecting: "reconnecting…", offline: "offline" };

let pageScope = null;

function parseHash() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || "vms", args: parts.slice(1) };
}

function showChrome(loggedIn) {
  const nav = document.getElementById("nav");
  nav.hidden = !loggedIn;
  document.getElementById("account").hidden = !loggedIn;
  if (!loggedIn) return;
  for (const link of nav.querySelectorAll("[data-min-role]")) {
    link.parentElement.hidden = !can(link.dataset.minRole);
  }
  document.getElementById("whoami").textContent = `${session.user} (${session.role})`;
  document.getElementById("logout").hidden = session.via !== "session";
}

function markCurrent(name) {
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.nav === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function route() {
  let { name, args } = parseHash();
  if (!session.user && name !== "login") {
    location.replace("#/login");
    return;
  }
  if (session.user && name === "login") name = "vms";
  pageScope?.dispose();
  pageScope = events.scope();
  clearSuccesses();
  const main = document.getElementById("main");
  const view = h("div", { class: "view" }); // a late async render of a page left behind lands in a detached node
  clear(main).append(view);
  markCurrent(name);
  const page = name === "vms" && args.length ? vm : PAGES[name];
  if (!page) {
    view.append(h("h1", { tabindex: "-1" }, "Not found"), h("p", {}, h("a", { href: "#/vms" }, "Back to the VMs")));
    return;
  }
  try {
    await page.render(view, args, pageScope);
  } catch (error) {
    showError(error);
  }
  document.title = `${view.querySelector("h1")?.textContent || "virtfleet"} · virtfleet`;
}

async function onRouteChange() {
  await route();
  // Move the focus to the new page's heading (unless the page chose a field), so keyboard and screen reader
  // users start there rather than on the link they followed.
  const main = document.getElementById("main");
  if (!main.contains(document.activeElement)) main.querySelector("h1")?.focus();
}

export function loggedIn(me) {
  setSession(me);
  showChrome(true);
  events.connect();
}

function loggedOut(message) {
  setSession(null);
  events.disconnect();
  showChrome(false);
  clearNotices();
  if (message) notify(message, "info");
  if (location.hash !== "#/login") location.hash = "#/login";
  else route();
}

async function start() {
  events.onStatus((status) => {
    const live = document.getElementById("live");
    live.textContent = LIVE_TEXT[status];
    live.dataset.status = status;
  });
  onUnauthenticated((message) => loggedOut(message || "Please log in (your session ended)."));
  document.getElementById("logout").addEventListener("click", async () => {
    try {
      await post("/auth/logout");
    } catch (error) {
      showError(error, "log out");
    }
    loggedOut("Logged out.");
  });
  try {
    loggedIn(await request("GET", "/auth/me", { quiet401: true }));
  } catch (error) {
    if (error.status !== 401) showError(error, "who am I");
    setSession(null);
    showChrome(false);
  }
  window.addEventListener("hashchange", onRouteChange);
  await route();
}

start();
