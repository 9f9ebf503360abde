// The dashboard's entry point: tabs (#overview, #connections, #webhooks,
// #inspector in the URL's fragment), then every part of the page, then
// the stream. Loaded as a module from this origin (the page's CSP allows
// no inline script).

import { initAuth } from "./api.js";
import { initCharts } from "./charts.js";
import { initConnections, refresh as refreshConnections } from "./connections.js";
import { initInspector } from "./inspector.js";
import { initJobs } from "./jobs.js";
import { startStream } from "./stream.js";
import { initWebhooks, refresh as refreshWebhooks } from "./webhooks.js";

const TABS = ["overview", "connections", "webhooks", "inspector"];
let shown = "overview";

function showTab(name) {
  if (!TABS.includes(name)) name = "overview";
  shown = name;
  for (const page of document.querySelectorAll(".page")) page.hidden = page.dataset.page !== name;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  if (name === "connections") refreshConnections();
  if (name === "webhooks") refreshWebhooks();
}

initAuth();
for (const b of document.querySelectorAll("#tabs button")) {
  b.addEventListener("click", () => { location.hash = b.dataset.tab; });
}
window.addEventListener("hashchange", () => showTab(location.hash.slice(1)));
initJobs();
initInspector();
initConnections(() => shown === "connections");
initWebhooks(() => shown === "webhooks");
initCharts();
showTab(location.hash.slice(1));
startStream();
