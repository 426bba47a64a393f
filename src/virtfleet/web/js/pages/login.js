// The login page: a session cookie from the server, and the CSRF token that goes with it.

import { loggedIn } from "../../app.js";
import { request } from "../api.js";
import { field, h } from "../dom.js";
import { inlineError } from "../notices.js";

export function render(view) {
  const username = h("input", { name: "username", autocomplete: "username", required: true, autocapitalize: "none" });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const submit = h("button", { type: "submit", class: "primary" }, "Log in");
  const form = h("form", { class: "card login", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title", tabindex: "-1" }, "Log in to virtfleet"),
    field("User name", username),
    field("Password", password),
    h("div", { class: "buttons" }, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      const me = await request("POST", "/auth/login", {
        body: { username: username.value.trim(), password: password.value }, quiet401: true,
      });
      loggedIn(me);
      location.hash = "#/vms";
    } catch (error) {
      inlineError(form, error.status === 401 ? { message: "Wrong user name or password." } : error);
      password.select();
    } finally {
      submit.disabled = false;
    }
  });
  view.append(h("div", { class: "login-wrap" }, form));
  username.focus();
}
