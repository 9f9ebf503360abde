// Live charts (uPlot, vendored): the host's counters as stats.js delivers
// them (pushed by the server's stats stream; polled only when that cannot be
// opened); rates and the p99 come from the difference between two readings.
// Without the host's counters (a build without telemetry), events/s is
// counted from the page's own stream.

import { startStats } from "./stats.js";
import { onEvent } from "./stream.js";

const $ = (id) => document.getElementById(id);
const WINDOW = 120; // seconds shown
const COLORS = ["#58a6ff", "#3fb950", "#d29922", "#f85149", "#bc8cff", "#39c5cf", "#ff7b72", "#8a99a8"];
const EVENT_TYPES = ["QueueStatus", "JobQueued", "JobStarted", "JobProgress", "JobCompleted", "JobFailed", "NoteUpdated"];

/** One chart: its series, its points, its uPlot and the line of current values under it. */
class Chart {
  constructor(id, labels, { rate = true, unit = "" } = {}) {
    this.card = $(id);
    this.labels = labels;
    this.rate = rate;
    this.unit = unit;
    this.data = [[], ...labels.map(() => [])];
    const plot = this.card.querySelector(".plot");
    const opts = {
      width: Math.max(plot.clientWidth, 300),
      height: 150,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, 1) * 1.1] } },
      axes: [
        // One line of wall-clock time (uPlot's default adds a date line under it).
        { stroke: "#8a99a8", grid: { stroke: "#222b35" }, ticks: { stroke: "#222b35" }, space: 64, size: 30, values: (u, splits) => splits.map(clock) },
        { stroke: "#8a99a8", grid: { stroke: "#222b35" }, ticks: { stroke: "#222b35" }, size: 44 },
      ],
      series: [{}, ...labels.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length], width: 1.5, points: { show: false } }))],
    };
    this.plot = new window.uPlot(opts, this.data, plot);
    new ResizeObserver(() => {
      if (plot.clientWidth > 0) this.plot.setSize({ width: plot.clientWidth, height: 150 });
    }).observe(plot);
    this.now = this.card.querySelector(".now");
    this.now.replaceChildren(...labels.map((label, i) => {
      const span = document.createElement("span");
      span.dataset.series = label;
      span.dataset.last = "0";
      span.dataset.total = "0";
      const sw = document.createElement("i");
      sw.className = "sw";
      sw.style.background = COLORS[i % COLORS.length];
      span.append(sw, document.createTextNode(label + " "), document.createElement("b"));
      return span;
    }));
  }

  /** Appends one point per series (null: no value) at `t` seconds. */
  push(t, values) {
    this.data[0].push(t);
    values.forEach((v, i) => this.data[i + 1].push(v));
    if (this.data[0].length > WINDOW) for (const column of this.data) column.shift();
    this.plot.setData(this.data);
    values.forEach((v, i) => {
      const span = this.now.children[i];
      const column = this.data[i + 1];
      const total = this.rate ? column.reduce((a, b) => a + (b || 0), 0) : v;
      span.dataset.last = v == null ? "" : String(v);
      span.dataset.total = String(Math.round((total || 0) * 1000) / 1000);
      span.querySelector("b").textContent = v == null ? "–" : fmt(v) + this.unit;
    });
  }
}

const pad = (n) => String(n).padStart(2, "0");

/** `hh:mm:ss` of a time in seconds. */
function clock(t) {
  const d = new Date(t * 1000);
  return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
}

function fmt(v) {
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return (Math.round(v * 100) / 100).toString();
}

/**
 * The p99 of the samples between two cumulative bucket reads (null: none),
 * interpolated within its bucket as Prometheus' histogram_quantile does, so
 * the chart agrees with the Grafana board (deploy/grafana).
 */
export function p99(bounds, before, after) {
  if (!after) return null;
  const delta = after.map((n, i) => n - ((before && before[i]) || 0));
  const total = delta[delta.length - 1];
  if (!(total > 0)) return null;
  const want = total * 0.99;
  for (let i = 0; i < bounds.length; i++) {
    if (delta[i] >= want) {
      const low = i > 0 ? bounds[i - 1] : 0;
      const below = i > 0 ? delta[i - 1] : 0;
      return low + ((bounds[i] - low) * (want - below)) / (delta[i] - below);
    }
  }
  // In the last (+Inf) bucket: its lower bound, as histogram_quantile answers.
  return bounds[bounds.length - 1];
}

const rate = (now, before, dt) => Math.max(0, ((now || 0) - (before || 0)) / dt);

export function initCharts() {
  if (!window.uPlot) {
    $("stats-note").textContent = "charts unavailable (uPlot did not load)";
    return;
  }
  const charts = {
    events: new Chart("chart-events", EVENT_TYPES),
    deliveries: new Chart("chart-deliveries", ["ws", "sse", "mcp"]),
    connections: new Chart("chart-connections", ["ws", "sse", "mcp"], { rate: false }),
    latency: new Chart("chart-latency", ["ws", "sse", "webhook"], { rate: false, unit: " ms" }),
    webhooks: new Chart("chart-webhooks", ["success", "retry", "failed"]),
  };
  // Events seen on this page's stream, per type, since the last tick.
  const seen = new Map();
  onEvent(({ event, meta }) => {
    if (!meta && event && event.type) seen.set(event.type, (seen.get(event.type) || 0) + 1);
  });
  let previous = null;
  // One reading: a point on every chart (rates against the previous one).
  function onStats(stats) {
    const at = performance.now() / 1000;
    const t = Date.now() / 1000;
    if (previous) {
      const dt = Math.max(at - previous.at, 0.001);
      const was = previous.stats;
      if (stats.counters) {
        charts.events.push(t, EVENT_TYPES.map((k) => rate(stats.published[k], was.published[k], dt)));
        charts.deliveries.push(t, ["ws", "sse", "mcp"].map((k) => rate(stats.delivered[k], was.delivered[k], dt)));
        charts.webhooks.push(t, ["success", "retry", "failed"].map((k) => rate(stats.webhooks[k], was.webhooks[k], dt)));
        const lat = stats.latency_ms;
        charts.latency.push(t, ["ws", "sse", "webhook"].map((k) => p99(lat.bounds, was.latency_ms[k], lat[k])));
        $("stats-note").textContent = "dropped " + stats.dropped + " · webhook queue " + stats.webhook_queue_depth;
      } else {
        charts.events.push(t, EVENT_TYPES.map((k) => (seen.get(k) || 0) / dt));
        $("stats-note").textContent = "events/s counted from this page's stream (the server has no telemetry)";
      }
    } else {
      // The first reading has nothing to diff against: an empty point, so
      // every chart's window starts at the same time.
      for (const chart of [charts.events, charts.deliveries, charts.webhooks, charts.latency]) {
        chart.push(t, chart.labels.map(() => null));
      }
    }
    seen.clear();
    const c = stats.connections;
    charts.connections.push(t, [c.ws, c.sse, c.mcp]);
    previous = { at, stats };
  }
  startStats(onStats);
}
