// The token and every API call. The token is asked for once (when the
// server answers 401), kept in sessionStorage, and sent only in the
// Authorization header (fetch) or as the WebSocket's bearer.<token>
// subprotocol: never in a URL.

const KEY = "matric-events.token";
const $ = (id) => document.getElementById(id);
let waiting = null;
const authListeners = [];

/** The token of this tab's session, or null (anonymous local mode). */
export function token() {
  return sessionStorage.getItem(KEY);
}

/** Headers carrying the token, if any. */
export function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

/** Calls `fn` whenever the token changes (set or forgotten). */
export function onAuthChange(fn) {
  authListeners.push(fn);
}

function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY);
  $("forget-token").hidden = !value;
  $("auth-mode").textContent = value ? "token mode" : "";
  for (const fn of authListeners) fn();
}

/** Forgets the token and asks for another one. */
export function forgetToken() {
  setToken(null);
  return askToken();
}

/** Shows the token dialog once; resolves when a token was entered. */
export function askToken(message) {
  if (!waiting) {
    waiting = new Promise((resolve) => {
      const dialog = $("token-dialog");
      $("token-error").textContent = message || "";
      $("token-input").value = "";
      if (!dialog.open) dialog.showModal();
      $("token-input").focus();
      $("token-form").onsubmit = (e) => {
        e.preventDefault();
        const value = $("token-input").value.trim();
        if (!value) return;
        waiting = null; // first: the dialog's close handler reopens it while one is waited for
        dialog.close();
        setToken(value);
        resolve(value);
      };
    });
  }
  return waiting;
}

/** An API error with the server's `error` code and HTTP status. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || String(status));
    this.status = status;
    this.code = code;
  }
}

/**
 * Calls the API with the token. A 401 asks for a (new) token and retries
 * once it is entered; a 403 is thrown (the token is valid but not enough).
 */
export async function api(method, path, body) {
  for (;;) {
    const headers = { ...authHeaders() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path, {
      method,
      headers,
      body: body !== undefined ? JSON.stringify(body) : undefined,
      cache: "no-store",
    });
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (res.status === 401) {
      await askToken(token() ? "That token was refused." : "");
      continue;
    }
    if (!res.ok) throw new ApiError(res.status, data && data.error, data && data.message);
    return data;
  }
}

/** Wires the header's "Forget token" button and the token dialog. */
export function initAuth() {
  // Nothing works without the token, and a dialog closed with Escape would
  // leave every waiting call waiting: while one is asked for, it stays.
  const dialog = $("token-dialog");
  dialog.addEventListener("cancel", (e) => { if (waiting) e.preventDefault(); });
  dialog.addEventListener("close", () => { if (waiting) dialog.showModal(); });
  $("forget-token").addEventListener("click", () => forgetToken());
  $("forget-token").hidden = !token();
  $("auth-mode").textContent = token() ? "token mode" : "";
}
