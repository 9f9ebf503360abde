"""The `websockets` package's client against /api/v1/ws.

Usage: python ws_websockets.py URL SECONDS. On each connection: prints
every text message, sends `refresh` after the first one, prints the close
code; reconnects once after the first close and exits after the second.
One JSON object a line: {"kind":"open"}, {"kind":"message","data":…},
{"kind":"close","code":…,"reason":…}.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def session(url):
    async with connect(url, open_timeout=10) as ws:
        out({"kind": "open"})
        first = True
        try:
            async for message in ws:
                out({"kind": "message", "data": message if isinstance(message, str) else None})
                if first:
                    first = False
                    await ws.send("refresh")
        except ConnectionClosed:
            pass
    # The close frame the server sent (not the one echoed back).
    rcvd = ws.protocol.close_rcvd
    out({"kind": "close", "code": rcvd.code if rcvd else None, "reason": rcvd.reason if rcvd else None})


async def main(url):
    for _ in range(2):
        await session(url)


if __name__ == "__main__":
    url, seconds = sys.argv[1], float(sys.argv[2])
    try:
        asyncio.run(asyncio.wait_for(main(url), seconds))
    except asyncio.TimeoutError:
        sys.exit(1)
