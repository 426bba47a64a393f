// The front-end libraries from npm (src/virtfleet/web/node_modules, served under /ui/vendor/), loaded on demand.

const VENDOR = "/ui/vendor";
export const INSTALL_HINT = "The browser consoles need the front-end packages: run scripts/install.sh "
  + "(or `npm ci --prefix src/virtfleet/web`) on the server and reload this page.";

function addStylesheet(href) {
  if (document.querySelector(`link[href="${href}"]`)) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = href;
  document.head.append(link);
}

export class VendorMissing extends Error {}

async function load(path) {
  try {
    return await import(`${VENDOR}/${path}`);
  } catch (error) {
    throw new VendorMissing(`${INSTALL_HINT} (${path}: ${error.message})`);
  }
}

/** {Terminal, FitAddon} from @xterm/xterm and @xterm/addon-fit. */
export async function loadXterm() {
  addStylesheet(`${VENDOR}/@xterm/xterm/css/xterm.css`);
  const [{ Terminal }, { FitAddon }] = await Promise.all([
    load("@xterm/xterm/lib/xterm.mjs"), load("@xterm/addon-fit/lib/addon-fit.mjs"),
  ]);
  return { Terminal, FitAddon };
}

/** noVNC's RFB class (an ES module with relative imports, served as it is). */
export async function loadRfb() {
  const module = await load("@novnc/novnc/core/rfb.js");
  return module.default;
}
