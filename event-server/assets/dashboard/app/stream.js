// The live stream: SSE read with fetch (so the token travels in the
// Authorization header, not the URL), in the envelope format so the
// inspector can show both; Last-Event-ID resumes after a drop. After three
// failed SSE attempts in a row, the WebSocket (token as the bearer.<token>
// subprotocol), which carries the plain events only.

import { askToken, authHeaders, onAuthChange, token } from "./api.js";
import { readFrames } from "./sse.js";

const $ = (id) => document.getElementById(id);
const listeners = [];
let lastEventId = null;
let failures = 0;
let delay = 500;
let generation = 0; // bumped to abandon the current connection
let current = null; // { abort() }

/** Calls `fn({event, envelope, id, transport})` for every event received. */
export function onEvent(fn) {
  listeners.push(fn);
}

function emit(item) {
  for (const fn of listeners) {
    try { fn(item); } catch (e) { console.error(e); }
  }
}

function setConn(state, text) {
  $("conn").dataset.state = state;
  $("conn-text").textContent = text;
}

/** Splits a parsed SSE `data` object into the plain event and its envelope. */
function unwrap(obj) {
  if (obj && obj.payload && obj.event_type) return { event: obj.payload, envelope: obj };
  return { event: obj, envelope: null };
}

function dispatch(frame, transport) {
  if (!frame.data) return;
  let obj;
  try { obj = JSON.parse(frame.data); } catch (e) { return; }
  // SSE names its synthetic frames; a rate-limited WebSocket sends the lag
  // signal as a plain message.
  const lagged = frame.event === "events.lagged" || (obj && obj.type === "events.lagged");
  if (lagged || frame.event === "resync_required") {
    if (frame.event === "resync_required") lastEventId = null;
    emit({ event: obj, envelope: null, id: null, transport, meta: true });
    return;
  }
  if (frame.id) {
    lastEventId = frame.id;
    $("last-id").textContent = "last id " + frame.id;
  }
  const { event, envelope } = unwrap(obj);
  emit({ event, envelope, id: frame.id || null, transport });
}

async function readSse(mine) {
  setConn("connecting", "connecting (SSE)…");
  const ctrl = new AbortController();
  current = { abort: () => ctrl.abort() };
  const headers = { Accept: "text/event-stream", ...authHeaders() };
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  const res = await fetch("/api/v1/events?format=envelope", { headers, signal: ctrl.signal, cache: "no-store" });
  if (res.status === 401) {
    ctrl.abort();
    await askToken(token() ? "That token was refused." : "");
    return "retry-now";
  }
  if (!res.ok || !res.body) throw new Error("SSE answered " + res.status);
  failures = 0;
  delay = 500;
  setConn("sse", "live (SSE)");
  await readFrames(res.body, (frame) => dispatch(frame, "sse"), () => mine === generation);
  return "ended";
}

async function connectSse() {
  const mine = ++generation;
  try {
    const outcome = await readSse(mine);
    if (mine !== generation) return;
    if (outcome === "retry-now") return connectSse();
  } catch (e) {
    if (mine !== generation) return;
    failures += 1;
  }
  setConn("connecting", "reconnecting…");
  const next = failures >= 3 ? connectWs : connectSse;
  setTimeout(() => { if (mine === generation) next(); }, delay);
  delay = Math.min(delay * 2, 10000);
}

function connectWs() {
  const mine = ++generation;
  setConn("connecting", "connecting (WebSocket)…");
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/api/v1/ws";
  const t = token();
  let socket;
  try {
    socket = t ? new WebSocket(url, ["bearer." + t]) : new WebSocket(url);
  } catch (e) {
    // A token with characters a subprotocol may not hold cannot go this
    // way (and must not go into the URL): stay with SSE.
    setConn("disconnected", "WebSocket unavailable: " + e.message);
    failures = 0;
    setTimeout(() => { if (mine === generation) connectSse(); }, delay);
    delay = Math.min(delay * 2, 10000);
    return;
  }
  current = { abort: () => socket.close(1000) };
  socket.onopen = () => { setConn("ws", "live (WebSocket)"); delay = 500; };
  socket.onmessage = (m) => dispatch({ data: m.data }, "ws");
  socket.onclose = (c) => {
    if (mine !== generation) return;
    setConn("disconnected", "disconnected (" + c.code + ")");
    // The WebSocket cannot tell a refused token apart: try SSE again, which can.
    failures = 0;
    setTimeout(() => { if (mine === generation) connectSse(); }, delay);
    delay = Math.min(delay * 2, 10000);
  };
}

/** Starts the stream (SSE first); a new token restarts it. */
export function startStream() {
  onAuthChange(() => {
    generation += 1;
    if (current) current.abort();
    connectSse();
  });
  connectSse();
}
