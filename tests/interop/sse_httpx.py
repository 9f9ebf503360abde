"""httpx + httpx-sse against /api/v1/events.

Usage: python sse_httpx.py URL SECONDS. httpx-sse parses the stream; the
reconnection is this script's, as the SSE spec asks of a client: after the
stream ends, wait the last `retry:` hint, then reconnect with
`Last-Event-ID` set to the last id seen. Prints one JSON object a line:
{"kind":"open"}, {"kind":"error"}, {"kind":"retry","ms":…},
{"kind":"event","event":…,"id":…,"data":…}.
"""

import json
import sys
import time

import httpx
from httpx_sse import connect_sse


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    url, seconds = sys.argv[1], float(sys.argv[2])
    deadline = time.monotonic() + seconds
    last_id = None
    retry_ms = None
    with httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client:
        while time.monotonic() < deadline:
            headers = {"Last-Event-ID": last_id} if last_id is not None else {}
            try:
                with connect_sse(client, "GET", url, headers=headers) as source:
                    source.response.raise_for_status()
                    out({"kind": "open", "last_event_id": last_id})
                    for sse in source.iter_sse():
                        if sse.retry is not None:
                            retry_ms = sse.retry
                            out({"kind": "retry", "ms": sse.retry})
                        if sse.id:
                            last_id = sse.id
                        if sse.data or sse.event != "message":
                            out({"kind": "event", "event": sse.event, "id": sse.id, "data": sse.data})
            except httpx.HTTPError as e:
                out({"kind": "error", "message": str(e)})
            else:
                out({"kind": "error", "message": "stream ended"})
            if retry_ms is None:
                out({"kind": "error", "message": "no retry hint before the end"})
                return 1
            time.sleep(min(retry_ms / 1000.0, max(0.0, deadline - time.monotonic())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
