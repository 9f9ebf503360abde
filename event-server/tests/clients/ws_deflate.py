"""A WebSocket client on PyPI `websockets` that negotiates permessage-deflate,
for event-server/tests/ws_compression.rs.

    python ws_deflate.py URL SECONDS [--server-max-window-bits N] [--no-offer]

Prints one JSON object per line on stdout:

    {"kind": "open", "extensions": "<the 101's Sec-WebSocket-Extensions or null>"}
    {"kind": "message", "text": "...", "compressed": true, "wire": 123}
    {"kind": "sent", "compressed": true, "wire": 45}
    {"kind": "closed", "code": 1009, "reason": "..."}

`compressed` says whether the message came with RSV1 set, `wire` how many
payload bytes it took on the wire. Each line read on stdin is a JSON
command: {"send": "text"} sends a text message (websockets compresses every
message once the extension is agreed), {"close": true} closes. The script
exits when the connection closes, or after SECONDS.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory


def emit(**line):
    print(json.dumps(line), flush=True)


def watch_rsv1(ws, seen):
    """Records (rsv1, wire length) of the first frame of each data message
    received, and prints the same of each one sent: the library compresses
    and inflates transparently and would not say."""
    for ext in ws.protocol.extensions:
        decode, encode = ext.decode, ext.encode

        def decoding(frame, *, max_size=None, decode=decode):
            if frame.opcode.name in ("TEXT", "BINARY"):
                seen.append((bool(frame.rsv1), len(frame.data)))
            return decode(frame, max_size=max_size)

        def encoding(frame, encode=encode):
            encoded = encode(frame)
            if encoded.opcode.name in ("TEXT", "BINARY"):
                emit(kind="sent", compressed=bool(encoded.rsv1), wire=len(encoded.data))
            return encoded

        ext.decode, ext.encode = decoding, encoding


async def commands(ws):
    loop = asyncio.get_running_loop()
    # Commands may carry a message of megabytes.
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if "send" in command:
                await ws.send(command["send"])
            if command.get("close"):
                await ws.close()
                return
    except ConnectionClosed:
        pass
    except Exception as e:  # the test reads it rather than waiting
        emit(kind="error", error=repr(e))


async def main(url, seconds, window_bits, offer):
    if not offer:
        options = {"compression": None}
    elif window_bits is None:
        options = {}
    else:
        factory = ClientPerMessageDeflateFactory(
            server_max_window_bits=window_bits, client_max_window_bits=True
        )
        options = {"compression": None, "extensions": [factory]}
    # The server's own limit is what is tested: no client-side one.
    async with connect(url, max_size=None, open_timeout=30, **options) as ws:
        emit(kind="open", extensions=ws.response.headers.get("Sec-WebSocket-Extensions"))
        seen = []
        watch_rsv1(ws, seen)
        control = asyncio.create_task(commands(ws))
        try:
            async for message in ws:
                compressed, wire = seen.pop(0) if seen else (False, len(message))
                if isinstance(message, str):
                    emit(kind="message", text=message, compressed=compressed, wire=wire)
                else:
                    emit(kind="binary", hex=message.hex(), compressed=compressed, wire=wire)
        except ConnectionClosed:
            pass
        finally:
            control.cancel()
        close = ws.protocol.close_rcvd
        emit(
            kind="closed",
            code=close.code if close else None,
            reason=close.reason if close else None,
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    url, seconds = args[0], float(args[1])
    bits = None
    if "--server-max-window-bits" in args:
        bits = int(args[args.index("--server-max-window-bits") + 1])
    try:
        asyncio.run(asyncio.wait_for(main(url, seconds, bits, "--no-offer" not in args), seconds))
    except asyncio.TimeoutError:
        emit(kind="timeout")
