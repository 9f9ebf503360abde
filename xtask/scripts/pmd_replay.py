"""The Autobahn|Testsuite's permessage-deflate cases (12.* and 13.*) replayed
with PyPI `websockets` as the client, for the cases kosoku 0.1.0 cannot run
itself: those whose payload is UTF-8 text (its case code hashes a `str` and
fails before connecting). `cargo xtask conformance` runs this after kosoku.

    python pmd_replay.py URL DATA_DIR [--count N] [--case GLOB ...]

Each case is Autobahn's: the same offer, the same test file (DATA_DIR is
kosoku's copy of Autobahn's `testdata`), the same message sizes and
auto-fragment sizes, messages cut from the file in turn; each message is sent
and its echo awaited and compared (type, length, SHA-1), then the client
closes with 1000 and expects 1000 back. `--count` is the messages per case
(Autobahn sends 1,000). One JSON line per case on stdout:

    {"case": "13.3.7", "verdict": "OK", "result": "...", "agreed": "...",
     "sent_compressed": 100, "received_compressed": 100, "ms": 812}

A case fails when an echo differs, the connection ends early, a message did
not come back within the case's time, the server agreed to no compression or
to parameters that do not answer the offer, or the close was not a clean 1000.
"""

import asyncio
import fnmatch
import hashlib
import json
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

# Autobahn's case12_x_x.py: (payload length, messages, case timeout, auto-fragment size).
MSG_SIZES = [
    (16, 1000, 60, 0),
    (64, 1000, 60, 0),
    (256, 1000, 120, 0),
    (1024, 1000, 240, 0),
    (4096, 1000, 480, 0),
    (8192, 1000, 480, 0),
    (16384, 1000, 480, 0),
    (32768, 1000, 480, 0),
    (65536, 1000, 480, 0),
    (131072, 1000, 480, 0),
    (8192, 1000, 480, 256),
    (16384, 1000, 480, 256),
    (32768, 1000, 480, 256),
    (65536, 1000, 480, 256),
    (131072, 1000, 480, 256),
    (131072, 1000, 480, 1024),
    (131072, 1000, 480, 4096),
    (131072, 1000, 480, 32768),
]

# 12.N: the test files in Autobahn's order; only the text ones are replayed.
FILES_12 = [
    ("12.1", "data1.json", False),
    ("12.2", "lena512.bmp", True),
    ("12.3", "pg2229.txt", True),
    ("12.4", "data1.html", False),
    ("12.5", "10.1.1.105.5439.pdf", True),
]

# 13.N: Autobahn's client offers, each a list of (requestNoContextTakeover,
# requestMaxWindowBits); every offer also accepts the server's
# client_no_context_takeover and client_max_window_bits, as Autobahn's do.
OFFERS_13 = [
    [(False, 0)],
    [(True, 0)],
    [(False, 9)],
    [(False, 15)],
    [(True, 9)],
    [(True, 15)],
    [(True, 9), (True, 0), (False, 0)],
]


def emit(**line):
    print(json.dumps(line), flush=True)


def factories(offers):
    return [
        ClientPerMessageDeflateFactory(
            server_no_context_takeover=no_context,
            client_no_context_takeover=True,
            server_max_window_bits=bits or None,
            client_max_window_bits=True,
        )
        for no_context, bits in offers
    ]


def cases():
    """(id, file, binary, offers, length, count, seconds, fragment) of every case."""
    for group, name, binary in FILES_12:
        for i, (length, count, seconds, fragment) in enumerate(MSG_SIZES, 1):
            yield (f"{group}.{i}", name, binary, [(False, 0)], length, count, seconds, fragment)
    for j, offers in enumerate(OFFERS_13, 1):
        for i, (length, count, seconds, fragment) in enumerate(MSG_SIZES, 1):
            yield (f"13.{j}.{i}", "data1.json", False, offers, length, count, seconds, fragment)


def pieces(message, size):
    """The message cut into fragments of `size` (characters of text, bytes
    of binary), or whole when `size` is 0."""
    if not size or len(message) <= size:
        return message
    return [message[i : i + size] for i in range(0, len(message), size)]


def watch(ws, counts):
    """Counts data messages sent and received with RSV1 set."""
    for ext in ws.protocol.extensions:
        decode, encode = ext.decode, ext.encode

        def decoding(frame, *, max_size=None, decode=decode):
            if frame.opcode.name in ("TEXT", "BINARY") and frame.rsv1:
                counts["received"] += 1
            return decode(frame, max_size=max_size)

        def encoding(frame, encode=encode):
            encoded = encode(frame)
            if encoded.opcode.name in ("TEXT", "BINARY") and encoded.rsv1:
                counts["sent"] += 1
            return encoded

        ext.decode, ext.encode = decoding, encoding


def agreed_answers(agreed, offers):
    """Whether the 101's extension answers one of `offers` (RFC 7692)."""
    if not agreed or not agreed.startswith("permessage-deflate"):
        return False
    params = {p.strip().split("=")[0]: p.strip() for p in agreed.split(";")[1:]}
    for _, bits in offers:
        if bits and params.get("server_max_window_bits") != f"server_max_window_bits={bits}":
            continue
        if not bits and "server_max_window_bits" in params:
            continue
        return True
    return False


async def run_case(url, data, case, count):
    case_id, _, binary, offers, length, _, seconds, fragment = case
    payload = data if binary else data.decode("utf-8")
    counts = {"sent": 0, "received": 0}
    started = time.monotonic()

    async def body():
        async with connect(
            url, compression=None, extensions=factories(offers), max_size=None, open_timeout=30
        ) as ws:
            agreed = ws.response.headers.get("Sec-WebSocket-Extensions")
            if not agreed_answers(agreed, offers):
                return "FAILED", f"the server agreed to {agreed!r} for offers {offers}", agreed
            watch(ws, counts)
            at = 0
            for _ in range(count):
                end = (at + length) % len(payload)
                message = payload[at:end] if end > at else payload[at:] + payload[:end]
                at = end
                want = hashlib.sha1(message if binary else message.encode("utf-8")).digest()
                await ws.send(pieces(message, fragment))
                echo = await ws.recv()
                if isinstance(echo, str) == binary:
                    return "FAILED", "the echo's type differs", agreed
                got = echo if binary else echo.encode("utf-8")
                if len(echo) != length or hashlib.sha1(got).digest() != want:
                    return "FAILED", f"the echo differs (length {len(echo)} of {length})", agreed
            await ws.close(1000)
            close = ws.protocol.close_rcvd
            if close is None or close.code != 1000:
                return "FAILED", f"closed with {close}", agreed
            return "OK", f"{count} echoes identical, closed with 1000", agreed

    try:
        verdict, result, agreed = await asyncio.wait_for(body(), seconds)
    except asyncio.TimeoutError:
        verdict, result, agreed = "FAILED", f"not done within {seconds} s", None
    except ConnectionClosed as e:
        verdict, result, agreed = "FAILED", f"the connection ended: {e}", None
    except OSError as e:
        verdict, result, agreed = "FAILED", f"connection: {e}", None
    emit(
        case=case_id,
        verdict=verdict,
        result=result,
        agreed=agreed,
        sent_compressed=counts["sent"],
        received_compressed=counts["received"],
        ms=round((time.monotonic() - started) * 1000),
    )
    return verdict


async def main(argv):
    url, data_dir = argv[0], Path(argv[1])
    count = 1000
    globs = []
    rest = argv[2:]
    while rest:
        flag, value, rest = rest[0], rest[1], rest[2:]
        if flag == "--count":
            count = int(value)
        elif flag == "--case":
            globs.append(value)
        else:
            raise SystemExit(f"unknown option {flag}")
    failed = 0
    files = {}
    for case in cases():
        case_id, name, binary = case[0], case[1], case[2]
        if binary and not globs:
            continue  # kosoku runs these itself
        if globs and not any(fnmatch.fnmatch(case_id, g) for g in globs):
            continue
        if name not in files:
            files[name] = (data_dir / name).read_bytes()
        if await run_case(url, files[name], case, min(count, case[5])) != "OK":
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
