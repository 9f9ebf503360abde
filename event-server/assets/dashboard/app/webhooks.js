// Webhooks (admin): the list, registration with the secret shown once, a
// test delivery, the recent deliveries of one webhook with their status
// and response code, and redelivery — the REST API of docs/protocol.md §4.

import { api } from "./api.js";

const $ = (id) => document.getElementById(id);
let selected = null; // the webhook whose deliveries are shown

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  td.title = text;
  return td;
}

function button(label, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls;
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function status(text) {
  $("wh-status").textContent = text;
}

function failed(what, e) {
  status(e.status === 403 ? "webhooks need the admin token" : "could not " + what + ": " + e.message);
}

/** Reloads the list. */
export async function refresh() {
  let list;
  try {
    list = await api("GET", "/api/v1/webhooks");
  } catch (e) {
    failed("list webhooks", e);
    return;
  }
  const rows = list.map((w) => {
    const tr = document.createElement("tr");
    tr.dataset.webhookId = w.id;
    if (w.id === selected) tr.className = "selected";
    const state = w.active ? "active" : "disabled" + (w.disabled_reason ? " (" + w.disabled_reason + ")" : "");
    const actions = document.createElement("td");
    actions.append(
      button("Send test", "small wh-test", () => sendTest(w.id)),
      " ",
      button("Deliveries", "secondary small wh-show", () => showDeliveries(w.id)),
      " ",
      button("Delete", "danger small wh-delete", () => remove(w.id)),
    );
    tr.append(
      cell(w.url), cell(w.events.length ? w.events.join(", ") : "all"), cell(state),
      cell(String(w.failure_count)), cell(w.last_triggered_at || "–"), actions,
    );
    return tr;
  });
  $("wh-table").querySelector("tbody").replaceChildren(...rows);
  if (selected) loadDeliveries();
}

async function create(e) {
  e.preventDefault();
  const events = $("wh-events").value.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    const w = await api("POST", "/api/v1/webhooks", { url: $("wh-url").value.trim(), events });
    $("wh-secret-id").textContent = w.id;
    $("wh-secret").textContent = w.secret;
    $("wh-secret-box").hidden = false;
    status("webhook " + w.id + " created");
    selected = w.id;
    $("wh-url").value = "";
    refresh();
  } catch (err) {
    failed("create the webhook", err);
  }
}

async function sendTest(id) {
  status("sending a test delivery…");
  try {
    const d = await api("POST", "/api/v1/webhooks/" + id + "/test");
    status("test delivery " + (d.success ? "succeeded" : "failed") +
      (d.last_status_code ? " (HTTP " + d.last_status_code + ")" : "") + (d.last_error ? ": " + d.last_error : ""));
    selected = id;
    refresh();
  } catch (err) {
    failed("send a test delivery", err);
  }
}

async function remove(id) {
  try {
    await api("DELETE", "/api/v1/webhooks/" + id);
    if (selected === id) {
      selected = null;
      $("wh-deliveries").querySelector("tbody").replaceChildren();
      $("wh-deliveries-of").textContent = "";
    }
    status("webhook " + id + " deleted");
    refresh();
  } catch (err) {
    failed("delete the webhook", err);
  }
}

function showDeliveries(id) {
  selected = id;
  refresh();
}

async function redeliver(webhookId, deliveryId) {
  try {
    await api("POST", "/api/v1/webhooks/" + webhookId + "/deliveries/" + deliveryId + "/redeliver");
    status("delivery " + deliveryId + " queued again");
    loadDeliveries();
  } catch (err) {
    failed("redeliver", err);
  }
}

async function loadDeliveries() {
  const id = selected;
  let list;
  try {
    list = await api("GET", "/api/v1/webhooks/" + id + "/deliveries?limit=20");
  } catch (e) {
    failed("list deliveries", e);
    return;
  }
  if (id !== selected) return;
  $("wh-deliveries-of").textContent = "of " + id;
  const rows = list.map((d) => {
    const tr = document.createElement("tr");
    tr.dataset.deliveryId = d.id;
    tr.dataset.status = d.status;
    const action = document.createElement("td");
    if (d.status !== "pending") action.append(button("Redeliver", "secondary small wh-redeliver", () => redeliver(id, d.id)));
    const code = cell(d.last_status_code != null ? String(d.last_status_code) : "–");
    code.className = "code";
    const st = cell(d.status);
    st.className = d.status === "succeeded" ? "ok" : d.status === "pending" ? "warn" : "fail";
    tr.append(cell(d.created_at), cell(d.event_type), st, cell(String(d.attempts)), code, cell(d.last_error || ""), action);
    return tr;
  });
  $("wh-deliveries").querySelector("tbody").replaceChildren(...rows);
}

export function initWebhooks(isShown) {
  $("wh-form").addEventListener("submit", create);
  $("wh-refresh").addEventListener("click", refresh);
  $("wh-secret-hide").addEventListener("click", () => {
    $("wh-secret").textContent = "";
    $("wh-secret-box").hidden = true;
  });
  setInterval(() => { if (isShown()) refresh(); }, 3000);
}
