// API tokens for scripts and the CLI: everyone manages their own, admins everyone's. A secret is shown once.

import { del, endSession, get, post, seg } from "../api.js";
import { field, h, row, section, select, table } from "../dom.js";
import { time } from "../format.js";
import { inlineError, showError } from "../notices.js";
import { confirmDialog } from "../parts/dialog.js";
import { can, session } from "../session.js";

const HEADERS = ["Name", "User", "Starts with", "Created", "Last used", "Actions"];

export async function render(view) {
  const listBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const secretBox = h("div", {});
  const users = can("admin") ? await get("/users").catch(() => []) : [];
  view.append(h("h1", { tabindex: "-1" }, "API tokens"),
    h("p", { class: "muted" }, "Scripts and the CLI send a token as `Authorization: Bearer …` "
      + "(or VIRTFLEET_TOKEN); it acts with its user's role."),
    secretBox, section("Tokens", listBox), section("New token", tokenForm(users, secretBox, () => load())),
    session.via === "session" ? section("Your password", passwordForm()) : null);

  const removeButton = (token) => {
    const button = h("button", { type: "button", class: "small danger", "aria-label": `Revoke token ${token.name}` },
      "Revoke");
    button.addEventListener("click", async () => {
      const answer = await confirmDialog({ title: `Revoke token ${token.name}?`, confirmLabel: "Revoke", danger: true,
        message: "Scripts using it are refused from now on." });
      if (!answer.ok) return;
      try {
        await del(`/tokens/${seg(token.id)}`);
      } catch (error) {
        showError(error, `revoke token ${token.name}`);
      }
      load();
    });
    return button;
  };

  async function load() {
    try {
      const tokens = await get("/tokens");
      listBox.replaceChildren(table("API tokens", HEADERS, tokens.map((t) => row(HEADERS, [
        t.name, t.user, h("code", {}, `${t.prefix}…`), time(t.created_at), time(t.last_used_at), removeButton(t),
      ])), "No tokens."));
    } catch (error) {
      listBox.replaceChildren(h("p", { class: "inline-error" }, error.message));
    }
  }
  await load();
}

function tokenForm(users, secretBox, onCreated) {
  const name = h("input", { name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,62}" });
  const owner = users.length ? select("user", users.map((u) => u.name), session.user) : null;
  const form = h("form", { "aria-label": "New token" },
    h("div", { class: "inline" }, field("Token name", name), owner ? field("For user", owner) : null),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Create token")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    inlineError(form, null);
    try {
      const body = { name: name.value.trim() };
      if (owner && owner.value !== session.user) body.user = owner.value;
      const created = await post("/tokens", body);
      const secret = h("input", { readonly: true, value: created.token, class: "secret", "aria-label": "New token" });
      secretBox.replaceChildren(h("div", { class: "card secret-card", role: "status" },
        h("h2", {}, `Token ${created.name} for ${created.user}`),
        h("p", {}, "Copy it now: it is shown only once and stored only as a hash."), secret));
      secret.select();
      form.reset();
      onCreated();
    } catch (error) {
      inlineError(form, error);
    }
  });
  return form;
}

function passwordForm() {
  const current = h("input", { name: "current_password", type: "password", required: true,
    autocomplete: "current-password" });
  const fresh = h("input", { name: "new_password", type: "password", required: true, minlength: "8",
    autocomplete: "new-password" });
  const again = h("input", { name: "confirm_password", type: "password", required: true, minlength: "8",
    autocomplete: "new-password" });
  const form = h("form", { "aria-label": "Change your password" },
    field("Current password", current), field("New password", fresh, "at least 8 characters"),
    field("New password again", again),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Change password")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    inlineError(form, null);
    if (fresh.value !== again.value) {
      inlineError(form, new Error("the two new passwords differ"));
      return;
    }
    try {
      await post("/auth/password", { current_password: current.value, new_password: fresh.value });
      endSession("Password changed: log in with the new one.");
    } catch (error) {
      inlineError(form, error);
    }
  });
  return form;
}
