// The event inspector: every event of the page's stream, newest first
// (the last 500), with pause, a type filter and a text filter; a click
// shows the event's JSON and its envelope (SSE only: the WebSocket carries
// the plain event).
//
// Events are drawn once per animation frame, not one by one: a busy
// stream (thousands a second) costs one DOM update per frame, and of a
// burst only the newest 500 are ever rendered.

import { onEvent } from "./stream.js";

const $ = (id) => document.getElementById(id);
const KEEP = 500;
let paused = false;
let held = []; // received while paused
let waiting = []; // received, not drawn yet (oldest first)
let drawing = false; // a frame is requested
let nextKey = 0;
const items = new Map(); // key -> {event, envelope, id, transport}

function visible(li) {
  const type = $("log-filter").value;
  const text = $("log-search").value.trim().toLowerCase();
  return (type === "" || li.dataset.type === type) && (text === "" || li.dataset.search.includes(text));
}

function render(item) {
  const key = String(nextKey++);
  items.set(key, item);
  const type = (item.event && item.event.type) || "unknown";
  const json = JSON.stringify(item.event);
  const li = document.createElement("li");
  li.dataset.key = key;
  li.dataset.type = type;
  li.dataset.search = (json + " " + (item.id || "")).toLowerCase();
  if (item.meta) li.className = "meta";
  const t = document.createElement("span");
  t.className = "t";
  t.textContent = type;
  const b = document.createElement("span");
  b.className = "b";
  b.textContent = json;
  li.append(t, b);
  li.hidden = !visible(li);
  return li;
}

/** Queues events (oldest first) to be drawn with the next frame. */
function add(list) {
  waiting.push(...list);
  if (waiting.length > KEEP) waiting.splice(0, waiting.length - KEEP);
  if (!drawing) {
    drawing = true;
    requestAnimationFrame(draw);
  }
}

function draw() {
  drawing = false;
  const fresh = document.createDocumentFragment();
  for (let i = waiting.length - 1; i >= 0; i--) fresh.append(render(waiting[i]));
  waiting = [];
  const log = $("log");
  log.prepend(fresh);
  while (log.children.length > KEEP) {
    items.delete(log.lastChild.dataset.key);
    log.lastChild.remove();
  }
}

function show(li) {
  const item = items.get(li.dataset.key);
  if (!item) return;
  for (const other of $("log").querySelectorAll("li.selected")) other.classList.remove("selected");
  li.classList.add("selected");
  $("detail-empty").hidden = true;
  $("detail-body").hidden = false;
  $("detail-meta").textContent = [item.transport, item.id ? "id " + item.id : ""].filter(Boolean).join(" · ");
  $("inspect-json").textContent = JSON.stringify(item.event, null, 2);
  if (item.envelope) {
    const { payload, ...envelope } = item.envelope;
    envelope.payload = payload === item.event ? "(the event above)" : payload;
    $("inspect-envelope").textContent = JSON.stringify(envelope, null, 2);
  } else {
    $("inspect-envelope").textContent = item.meta
      ? "(a stream signal, not an event: no envelope)"
      : "(not available: this event came over the WebSocket, which sends plain events)";
  }
}

function setPaused(value) {
  paused = value;
  $("pause").textContent = paused ? "Resume" : "Pause";
  $("pause").classList.toggle("secondary", paused);
  if (!paused) {
    add(held);
    held = [];
  }
  $("paused-count").textContent = paused ? "paused · 0 new" : "";
}

function refilter() {
  for (const li of $("log").children) li.hidden = !visible(li);
}

export function initInspector() {
  onEvent((item) => {
    if (paused) {
      held.push(item);
      if (held.length > KEEP) held.shift();
      $("paused-count").textContent = "paused · " + held.length + " new";
    } else {
      add([item]);
    }
  });
  $("pause").addEventListener("click", () => setPaused(!paused));
  $("log-filter").addEventListener("change", refilter);
  $("log-search").addEventListener("input", refilter);
  $("log-tools").addEventListener("submit", (e) => e.preventDefault());
  $("log-clear").addEventListener("click", () => {
    $("log").replaceChildren();
    items.clear();
    waiting = [];
  });
  $("log").addEventListener("click", (e) => {
    const li = e.target.closest("li");
    if (li) show(li);
  });
}
