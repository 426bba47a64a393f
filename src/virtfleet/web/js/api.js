// The one way the UI talks to the server: JSON in and out, the CSRF header on writes, API errors as ApiError.

import { session } from "./session.js";

export const BASE = "/api/v1";

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

let unauthenticated = (_message) => {};

/** What to do when the server answers 401 (the session expired or was never there): show the login page. */
export function onUnauthenticated(handler) {
  unauthenticated = handler;
}

/** The server ended our session on purpose (a new password): back to the login page, saying why. */
export function endSession(message) {
  unauthenticated(message);
}

function url(path, query) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null) params.set(key, String(value));
  }
  const text = params.toString();
  return `${BASE}${path}${text ? `?${text}` : ""}`;
}

export async function request(method, path, { body, query, quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  let response;
  try {
    response = await fetch(url(path, query), {
      method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, "network", `cannot reach the server (${error.message})`);
  }
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : await response.text();
  if (response.ok) return data;
  const error = data && data.error ? data.error : { code: `http_${response.status}`, message: response.statusText };
  const { code, message, ...details } = error;
  if (response.status === 401 && !quiet401) unauthenticated();
  throw new ApiError(response.status, code, message || `HTTP ${response.status}`, details);
}

export const get = (path, query) => request("GET", path, { query });
export const post = (path, body, query) => request("POST", path, { body, query });
export const patch = (path, body) => request("PATCH", path, { body });
export const del = (path, query) => request("DELETE", path, { query });

/** A path segment: VM, pool and volume names are plain, but encode anyway. */
export const seg = (value) => encodeURIComponent(value);

export function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}${BASE}${path}`;
}
