// The npm `eventsource` package's EventSource against /api/v1/events.
// Usage: node sse-eventsource.cjs URL SECONDS (with NODE_PATH at the
// node_modules holding `eventsource`). Prints one JSON object a line:
// {"kind":"open"}, {"kind":"error"}, {"kind":"event","event":…,"id":…,"data":…}.
// Reconnection (and its delay, the server's `retry:`) is the package's own.
'use strict';
const { EventSource } = require('eventsource');

const [url, seconds] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const es = new EventSource(url);
es.onopen = () => out({ kind: 'open' });
es.onerror = () => out({ kind: 'error' });
const show = (e) => out({ kind: 'event', event: e.type, id: e.lastEventId, data: e.data });
for (const name of ['QueueStatus', 'NoteUpdated']) es.addEventListener(name, show);
es.onmessage = show;
setTimeout(() => {
  es.close();
  process.exit(0);
}, Number(seconds) * 1000);
