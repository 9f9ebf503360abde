// The connections table (GET /api/v1/connections, admin) with a disconnect
// button per row (DELETE /api/v1/connections/{id}). Refreshed every 2 s
// while the tab is shown.

import { api } from "./api.js";

const $ = (id) => document.getElementById(id);

function age(since) {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(since)) / 1000));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  td.title = text;
  return td;
}

async function disconnect(id, button) {
  button.disabled = true;
  try {
    await api("DELETE", "/api/v1/connections/" + id);
    $("conn-status").textContent = "connection " + id + " disconnected";
  } catch (e) {
    $("conn-status").textContent = "could not disconnect " + id + ": " + e.message;
  }
  refresh();
}

/** Reloads the table. */
export async function refresh() {
  let list;
  try {
    list = await api("GET", "/api/v1/connections");
  } catch (e) {
    $("conn-status").textContent = e.status === 403
      ? "listing connections needs the admin token"
      : "could not list connections: " + e.message;
    return;
  }
  list.sort((a, b) => a.id - b.id);
  const rows = list.map((c) => {
    const tr = document.createElement("tr");
    tr.dataset.connId = String(c.id);
    tr.dataset.transport = c.transport;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "danger small disconnect";
    button.textContent = "Disconnect";
    button.addEventListener("click", () => disconnect(c.id, button));
    const action = document.createElement("td");
    action.append(button);
    tr.append(
      cell(String(c.id)), cell(c.transport), cell(c.principal), cell(c.remote_addr || "–"),
      cell(age(c.connected_at)), cell(String(c.events_sent)), cell(String(c.dropped)), action,
    );
    return tr;
  });
  $("conn-table").querySelector("tbody").replaceChildren(...rows);
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
