// User management (admins only): logins and their roles, and the audit log of who did what.

import { del, get, patch, post, seg } from "../api.js";
import { field, h, row, section, select, table } from "../dom.js";
import { time } from "../format.js";
import { inlineError, notify, showError } from "../notices.js";
import { confirmDialog, promptDialog } from "../parts/dialog.js";
import { can, session } from "../session.js";

const ROLES = ["viewer", "operator", "admin"];
const USER_HEADERS = ["User", "Role", "Login", "Created", "Actions"];
const AUDIT_HEADERS = ["Time", "User", "Request", "Status", "Detail"];

export async function render(view, _args, scope) {
  view.append(h("h1", { tabindex: "-1" }, "Users"));
  if (!can("admin")) {
    view.append(h("p", { class: "inline-error", role: "alert" },
      `Only admins manage users; you are logged in as ${session.user} (${session.role}).`));
    return;
  }
  const userBox = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const auditBox = h("div", {});
  view.append(section("Users", userBox), section("Add a user", userForm(() => load())), section("Audit log", auditBox));

  function actions(user) {
    const role = select("role", ROLES, user.role);
    role.setAttribute("aria-label", `Role of ${user.name}`);
    role.addEventListener("change", () => change(user, { role: role.value }, `role of ${user.name} is now ${role.value}`));
    const password = h("button", { type: "button", class: "small", "aria-label": `Set password of ${user.name}` },
      "Set password");
    password.addEventListener("click", async () => {
      const value = await promptDialog({ title: `New password for ${user.name}`, label: "Password",
        type: "password", confirmLabel: "Set password", minlength: 8 });
      if (value) change(user, { password: value }, `password of ${user.name} changed`);
    });
    const remove = h("button", { type: "button", class: "small danger", "aria-label": `Delete user ${user.name}` },
      "Delete");
    remove.addEventListener("click", async () => {
      const answer = await confirmDialog({ title: `Delete user ${user.name}?`, confirmLabel: "Delete", danger: true,
        message: "The user can no longer log in, and their tokens stop working." });
      if (!answer.ok) return;
      try {
        await del(`/users/${seg(user.name)}`);
      } catch (error) {
        showError(error, `delete user ${user.name}`);
      }
      load();
    });
    return h("div", { class: "actions" }, role, password, remove);
  }

  async function change(user, body, done) {
    try {
      await patch(`/users/${seg(user.name)}`, body);
      notify(done, "success");
    } catch (error) {
      showError(error, `change ${user.name}`);
    }
    load();
  }

  async function load() {
    try {
      const users = await get("/users");
      userBox.replaceChildren(table("Users", USER_HEADERS, users.map((u) => row(USER_HEADERS, [
        u.name, u.role, u.has_password ? "password" : "token only", time(u.created_at), actions(u),
      ]))));
    } catch (error) {
      userBox.replaceChildren(h("p", { class: "inline-error" }, error.message));
    }
    try {
      const audit = await get("/audit", { limit: 50 });
      auditBox.replaceChildren(table("Audit log", AUDIT_HEADERS, audit.map((a) => row(AUDIT_HEADERS, [
        h("span", { class: "nowrap" }, time(a.time)), a.user || "–", h("code", {}, `${a.method} ${a.path}`), String(a.status), a.detail || "–",
      ])), "Nothing recorded yet."));
    } catch (error) {
      auditBox.replaceChildren(h("p", { class: "inline-error" }, error.message));
    }
  }
  scope.on("open", load);
  await load();
}

function userForm(onCreated) {
  const name = h("input", { name: "name", required: true, autocomplete: "off" });
  const role = select("role", ROLES, "viewer");
  const password = h("input", { name: "password", type: "password", minlength: 8, autocomplete: "new-password" });
  const form = h("form", { "aria-label": "Add a user" },
    h("div", { class: "inline" }, field("User name", name), field("Role", role)),
    field("Password", password, "at least 8 characters; leave empty for a token-only user"),
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Add user")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    inlineError(form, null);
    try {
      await post("/users", { name: name.value.trim(), role: role.value, password: password.value || null });
      notify(`user ${name.value.trim()} added`, "success");
      form.reset();
      onCreated();
    } catch (error) {
      inlineError(form, error);
    }
  });
  return form;
}
