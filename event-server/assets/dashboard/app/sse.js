// Server-Sent Events read from a fetch() response body. fetch, not
// EventSource: the token travels in the Authorization header, never in a
// URL. Used by the event stream (stream.js) and the stats feed (stats.js).

/**
 * Reads the frames of `body` until it ends or `current()` turns false,
 * calling `onFrame({event, data, id})` for each (comments are skipped).
 */
export async function readFrames(body, onFrame, current) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let frame = { data: "" };
  for (;;) {
    const { value, done } = await reader.read();
    if (done || !current()) break;
    // Split once per chunk (a chunk can hold hundreds of frames); the
    // unfinished last line waits for the next one.
    const lines = (buffer + value).split("\n");
    buffer = lines.pop();
    for (let line of lines) {
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        onFrame(frame);
        frame = { data: "" };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? "" : line.slice(colon + 1);
      if (val.startsWith(" ")) val = val.slice(1);
      if (field === "data") frame.data = frame.data ? frame.data + "\n" + val : val;
      else if (field === "event") frame.event = val;
      else if (field === "id") frame.id = val;
    }
  }
}
