// The connections table (GET /api/v1/connections, admin) with a disconnect
// button per row (DELETE /api/v1/connections/{id}). Refreshed every 2 s
// while the tab is shown, rows updated in place (table.js).

import { api } from "./api.js";
import { button, row, setCells, syncRows } from "./table.js";

const $ = (id) => document.getElementById(id);
let latest = 0; // the newest refresh: an older answer arriving late is dropped

function age(since) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(since)) / 1000));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

async function disconnect(id, b) {
  b.disabled = true;
  try {
    await api("DELETE", "/api/v1/connections/" + id);
    $("conn-status").textContent = "connection " + id + " disconnected";
  } catch (e) {
    $("conn-status").textContent = "could not disconnect " + id + ": " + e.message;
  }
  refresh();
}

function create(c) {
  const tr = row(7);
  tr.dataset.connId = String(c.id);
  tr.dataset.transport = c.transport;
  const action = document.createElement("td");
  action.append(button("Disconnect", "danger small disconnect", (b) => disconnect(c.id, b)));
  tr.append(action);
  return tr;
}

/** Reloads the table. */
export async function refresh() {
  const mine = ++latest;
  let list;
  try {
    list = await api("GET", "/api/v1/connections");
    if (mine !== latest) return;
  } catch (e) {
    if (mine !== latest) return;
    $("conn-status").textContent = e.status === 403
      ? "listing connections needs the admin token"
      : "could not list connections: " + e.message;
    return;
  }
  list.sort((a, b) => a.id - b.id);
  syncRows($("conn-table").querySelector("tbody"), list, (c) => c.id, create, (tr, c) => setCells(tr, [
    String(c.id), c.transport, c.principal, c.remote_addr || "–",
    age(c.connected_at), String(c.events_sent), String(c.dropped),
  ]));
  if (!$("conn-status").textContent.includes("disconnect")) {
    $("conn-status").textContent = list.length + " open";
  }
}

export function initConnections(isShown) {
  $("conn-refresh").addEventListener("click", () => {
    $("conn-status").textContent = "";
    refresh();
  });
  setInterval(() => { if (isShown()) refresh(); }, 2000);
}
