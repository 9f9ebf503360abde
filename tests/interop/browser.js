// Run in a page of the server's own origin through WebDriver's
// `execute`: arguments[0] is "sse" or "ws", arguments[1] the URL. The
// browser's native EventSource or WebSocket behaves as the Node and Python
// clients do (see sse-eventsource.cjs, ws-ws.cjs) and appends the same
// JSON objects to window.__interop, which the test reads and clears.
const [transport, url] = arguments;
window.__interop = [];
const out = (o) => window.__interop.push(JSON.stringify(o));
if (transport === 'sse') {
  const es = new EventSource(url);
  window.__es = es;
  es.onopen = () => out({ kind: 'open' });
  es.onerror = () => out({ kind: 'error' });
  const show = (e) => out({ kind: 'event', event: e.type, id: e.lastEventId, data: e.data });
  for (const name of ['QueueStatus', 'NoteUpdated']) es.addEventListener(name, show);
  es.onmessage = show;
} else {
  let closes = 0;
  const connect = () => {
    const ws = new WebSocket(url);
    let first = true;
    ws.onopen = () => out({ kind: 'open' });
    ws.onmessage = (e) => {
      out({ kind: 'message', data: typeof e.data === 'string' ? e.data : null });
      if (first) {
        first = false;
        ws.send('refresh');
      }
    };
    ws.onclose = (e) => {
      out({ kind: 'close', code: e.code, reason: e.reason });
      closes += 1;
      if (closes === 1) connect();
    };
  };
  connect();
}
