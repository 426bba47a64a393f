// The host (this server's hypervisor) and its guest images.

import { get, post, seg } from "../api.js";
import { h, row, section, table } from "../dom.js";
import { bytes, mib } from "../format.js";
import { track } from "../jobs.js";
import { showError } from "../notices.js";
import { can } from "../session.js";

const IMAGE_HEADERS = ["Image", "Built", "Kernel", "Size", "Actions"];

function hostFacts(host) {
  const items = [
    ["Host name", host.hostname], ["CPUs", host.cpus], ["Memory", mib(host.memory_mib)], ["Driver", host.driver],
    ["Hypervisor", host.hypervisor], ["KVM", host.kvm_usable ? "usable" : `not usable: ${host.kvm_reason}`],
    ["virtfleet", host.version],
  ];
  return h("dl", { class: "facts" }, items.map(([term, value]) => [h("dt", {}, term), h("dd", {}, String(value))]));
}

export async function render(view, _args, scope) {
  const hostBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const imageBox = h("div", {});
  view.append(h("h1", { tabindex: "-1" }, "Hosts"), section("This host", hostBox), section("Guest images", imageBox));

  const build = (image) => {
    if (!can("operator") || !image.buildable) return "–";
    const button = h("button", { type: "button", class: "small", "aria-label": `Build image ${image.name}` },
      image.built ? "Rebuild" : "Build");
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await track(await post(`/images/${seg(image.name)}/build`), `build image ${image.name}`);
      } catch (error) {
        showError(error, `build image ${image.name}`);
      }
      button.disabled = false;
      loadImages();
    });
    return button;
  };

  async function loadImages() {
    try {
      const images = await get("/images");
      imageBox.replaceChildren(table("Guest images", IMAGE_HEADERS, images.map((image) => row(IMAGE_HEADERS, [
        image.name, image.built ? "yes" : "no", image.kernel_release || "–",
        image.built ? bytes(image.size_bytes) : "–", build(image),
      ])), "No images."));
    } catch (error) {
      imageBox.replaceChildren(h("p", { class: "inline-error" }, error.message));
    }
  }

  async function load() {
    try {
      hostBox.replaceChildren(hostFacts(await get("/host")));
    } catch (error) {
      hostBox.replaceChildren(h("p", { class: "inline-error" }, error.message));
    }
    loadImages();
  }
  scope.on("open", load);
  await load();
}
