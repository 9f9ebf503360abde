// The npm `ws` package's WebSocket client against /api/v1/ws.
// Usage: node ws-ws.cjs URL SECONDS (NODE_PATH at the node_modules holding
// `ws`). On each connection: prints every text message, sends `refresh`
// after the first one, prints the close code; reconnects once after the
// first close and exits after the second. One JSON object a line:
// {"kind":"open"}, {"kind":"message","data":…}, {"kind":"close","code":…,"reason":…}.
'use strict';
const WebSocket = require('ws');

const [url, seconds] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
let closes = 0;
function connect() {
  const ws = new WebSocket(url);
  let first = true;
  ws.on('open', () => out({ kind: 'open' }));
  ws.on('message', (data, binary) => {
    out({ kind: 'message', data: binary ? null : data.toString() });
    if (first) {
      first = false;
      ws.send('refresh');
    }
  });
  ws.on('error', (e) => out({ kind: 'error', message: String(e.message) }));
  ws.on('close', (code, reason) => {
    out({ kind: 'close', code, reason: reason.toString() });
    closes += 1;
    if (closes === 1) connect();
    else process.exit(0);
  });
}
connect();
setTimeout(() => process.exit(1), Number(seconds) * 1000);
