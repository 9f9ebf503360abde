// Where the charts' counters come from: pushed by the server on
// GET /api/v1/stats/stream (one `stats` frame per STATS_STREAM_INTERVAL_MS,
// read with fetch so the token stays in the Authorization header). Only when
// that stream cannot be opened (refused, e.g. 503 over STATS_STREAM_MAX, or
// not reachable) is GET /api/v1/stats polled once a second instead; the page
// says which (#stats-source) and tries the stream again, backing off to a
// minute. A stream that ends (a restart) is opened again at once.

import { api, askToken, authHeaders, onAuthChange, token } from "./api.js";
import { readFrames } from "./sse.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
let sink = () => {};
let generation = 0; // bumped to abandon the current stream
let ctrl = null;
let retryTimer = null;
let retryDelay = 2000;
let pollTimer = null;
let polling = false; // a poll in flight
let readings = 0;

function setSource(source, text) {
  const el = $("stats-source");
  el.dataset.source = source;
  el.textContent = text;
}

/** Hands one reading to the charts; #stats-source counts them (data-readings). */
function feed(stats) {
  readings += 1;
  $("stats-source").dataset.readings = String(readings);
  sink(stats);
}

/** Calls `onStats(stats)` with every reading of the host's counters. */
export function startStats(onStats) {
  sink = onStats;
  // A new token: the stream is opened again with it.
  onAuthChange(() => connect());
  connect();
}

async function connect() {
  const mine = ++generation;
  clearTimeout(retryTimer);
  if (ctrl) ctrl.abort();
  ctrl = new AbortController();
  let res;
  try {
    const headers = { Accept: "text/event-stream", ...authHeaders() };
    res = await fetch("/api/v1/stats/stream", { headers, signal: ctrl.signal, cache: "no-store" });
  } catch (e) {
    if (mine === generation) fallBack(mine, "the stats stream could not be opened: " + e.message);
    return;
  }
  if (mine !== generation) return;
  if (res.status === 401) {
    ctrl.abort();
    await askToken(token() ? "That token was refused." : "");
    if (mine === generation) connect();
    return;
  }
  if (!res.ok || !res.body) {
    let why = "HTTP " + res.status;
    try {
      const body = await res.json();
      if (body && body.error) why += " " + body.error;
    } catch (e) { /* not JSON */ }
    if (mine === generation) fallBack(mine, "the stats stream was refused (" + why + ")");
    return;
  }
  stopPolling();
  retryDelay = 2000;
  setSource("stream", "counters pushed by the server (stats stream)");
  try {
    await readFrames(res.body, (frame) => {
      if (frame.event !== "stats" || !frame.data || mine !== generation) return;
      let stats;
      try { stats = JSON.parse(frame.data); } catch (e) { return; }
      feed(stats);
    }, () => mine === generation);
  } catch (e) { /* dropped: opened again below */ }
  if (mine !== generation) return;
  setSource("reconnecting", "stats stream ended; reconnecting…");
  retryTimer = setTimeout(() => { if (mine === generation) connect(); }, 500);
}

/** Polls until the stream can be opened, which is tried again later. */
function fallBack(mine, why) {
  setSource("poll", "polling /api/v1/stats: " + why);
  if (!pollTimer) {
    poll();
    pollTimer = setInterval(poll, POLL_MS);
  }
  retryTimer = setTimeout(() => { if (mine === generation) connect(); }, retryDelay);
  retryDelay = Math.min(retryDelay * 2, 60000);
}

function stopPolling() {
  clearInterval(pollTimer);
  pollTimer = null;
}

async function poll() {
  if (polling) return;
  polling = true;
  try {
    const stats = await api("GET", "/api/v1/stats");
    if (pollTimer) feed(stats);
  } catch (e) {
    $("stats-note").textContent = "stats unavailable: " + e.message;
  } finally {
    polling = false;
  }
}
