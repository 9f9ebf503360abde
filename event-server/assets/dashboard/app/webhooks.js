// Webhooks (admin): the list, registration with the secret shown once, a
// test delivery, the recent deliveries of one webhook with their status
// and response code, and redelivery — the REST API of docs/protocol.md §4.

import { api } from "./api.js";
import { button, row, setCells, syncRows } from "./table.js";

const $ = (id) => document.getElementById(id);
let selected = null; // the webhook whose deliveries are shown
let latestList = 0; // the newest reload of each table: older answers arriving late are dropped
let latestDeliveries = 0;

function status(text) {
  $("wh-status").textContent = text;
}

function failed(what, e) {
  status(e.status === 403 ? "webhooks need the admin token" : "could not " + what + ": " + e.message);
}

function createWebhook(w) {
  const tr = row(5);
  tr.dataset.webhookId = w.id;
  const actions = document.createElement("td");
  actions.append(
    button("Send test", "small wh-test", () => sendTest(w.id)),
    " ",
    button("Deliveries", "secondary small wh-show", () => showDeliveries(w.id)),
    " ",
    button("Delete", "danger small wh-delete", () => remove(w.id)),
  );
  tr.append(actions);
  return tr;
}

function updateWebhook(tr, w) {
  tr.classList.toggle("selected", w.id === selected);
  const state = w.active ? "active" : "disabled" + (w.disabled_reason ? " (" + w.disabled_reason + ")" : "");
  setCells(tr, [
    w.url, w.events.length ? w.events.join(", ") : "all", state,
    String(w.failure_count), w.last_triggered_at || "–",
  ]);
}

/** Reloads the list (and the shown deliveries). */
export async function refresh() {
  const mine = ++latestList;
  let list;
  try {
    list = await api("GET", "/api/v1/webhooks");
  } catch (e) {
    if (mine === latestList) failed("list webhooks", e);
    return;
  }
  if (mine !== latestList) return;
  syncRows($("wh-table").querySelector("tbody"), list, (w) => w.id, createWebhook, updateWebhook);
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

function createDelivery(webhookId, d) {
  const tr = row(6);
  tr.dataset.deliveryId = d.id;
  tr.children[4].className = "code";
  const action = document.createElement("td");
  action.append(button("Redeliver", "secondary small wh-redeliver", () => redeliver(webhookId, d.id)));
  tr.append(action);
  return tr;
}

function updateDelivery(tr, d) {
  tr.dataset.status = d.status;
  tr.children[2].className = d.status === "succeeded" ? "ok" : d.status === "pending" ? "warn" : "fail";
  // A pending delivery is still the worker's: nothing to redeliver yet.
  tr.querySelector(".wh-redeliver").hidden = d.status === "pending";
  setCells(tr, [
    d.created_at, d.event_type, d.status, String(d.attempts),
    d.last_status_code != null ? String(d.last_status_code) : "–", d.last_error || "",
  ]);
}

async function loadDeliveries() {
  const id = selected;
  const mine = ++latestDeliveries;
  let list;
  try {
    list = await api("GET", "/api/v1/webhooks/" + id + "/deliveries?limit=20");
  } catch (e) {
    if (mine === latestDeliveries) failed("list deliveries", e);
    return;
  }
  if (id !== selected || mine !== latestDeliveries) return;
  $("wh-deliveries-of").textContent = "of " + id;
  // Keyed by webhook too: another webhook's deliveries get rows (and buttons) of their own.
  syncRows($("wh-deliveries").querySelector("tbody"), list, (d) => id + "/" + d.id,
    (d) => createDelivery(id, d), updateDelivery);
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
