"""The live source's own WebSocket frame cutter (`_DirectConnection.data_received`).

A raw loopback server completes the RFC 6455 handshake, then writes a byte stream of server
frames cut at random points: short, 16-bit and 64-bit lengths, TEXT and BINARY, a ping in the
middle (which websockets must answer), and a fragmented message at the end (after which the
connection falls back to websockets' assembler). Every message must arrive once, in order,
and most of them through the fast path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from typing import Any

from websockets.asyncio.client import connect

from connectors.tardis.websocket import _DirectConnection

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(payload: bytes, first: int) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big") + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload


class Sink:
    direct = True

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def deliver(self, data: Any, connection: Any) -> None:
        self.got.append(bytes(data))


def messages(rng: random.Random) -> list[bytes]:
    sizes = [rng.choice((5, 90, 125, 126, 300, 65535, 65536, 70_000)) for _ in range(400)]
    return [(f"{i:05d}:".encode() + b"x" * n) for i, n in enumerate(sizes)]


async def run(seed: int) -> tuple[Sink, int, list[bytes], bytes, bytes]:
    rng = random.Random(seed)
    msgs = messages(rng)
    stream = bytearray()
    for i, m in enumerate(msgs[:-2]):
        stream += frame(m, 0x81 if i % 3 else 0x82)
        if i == 200:
            stream += frame(b"are you there", 0x89)  # ping
    stream += frame(msgs[-2], 0x81)
    half = len(msgs[-1]) // 2
    stream += frame(msgs[-1][:half], 0x01) + frame(msgs[-1][half:], 0x80)  # fragmented
    client_bytes = bytearray()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        i = 0
        while i < len(stream):
            step = rng.randint(1, 9000)
            writer.write(bytes(stream[i:i + step]))
            await writer.drain()
            i += step
            if rng.random() < 0.2:
                await asyncio.sleep(0.001)
        try:
            while True:
                data = await asyncio.wait_for(reader.read(65536), 2)
                if not data:
                    break
                client_bytes.extend(data)
        except TimeoutError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = Sink()
    cls = type("_TestConnection", (_DirectConnection,), {"sink": sink})
    async with server:
        ws = await connect(f"ws://127.0.0.1:{port}", create_connection=cls,
                           compression=None, max_size=None, ping_interval=None)
        last = await asyncio.wait_for(ws.recv(decode=False), 10)  # the fragmented one
        await ws.close()
    return sink, ws.fast_frames, msgs, bytes(last), bytes(client_bytes)


def first_client_frame(sent: bytes) -> tuple[int, bytes]:
    """Opcode and unmasked payload of the client's first frame (after its HTTP request)."""
    b = sent
    n = b[1] & 0x7F
    mask, body = b[2:6], b[6:6 + n]
    return b[0], bytes(x ^ mask[i % 4] for i, x in enumerate(body))


def test_frames_cut_at_random_points_arrive_once_in_order_mostly_on_the_fast_path() -> None:
    for seed in (1, 2, 3):
        sink, fast, msgs, last, sent = asyncio.run(run(seed))
        assert sink.got == msgs[:-1], seed
        assert last == msgs[-1]  # the fragmented message, assembled by websockets
        assert fast == len(msgs) - 1, seed  # taken over right after the handshake
        # the ping in the middle went to websockets, which answered it with a pong
        assert first_client_frame(sent) == (0x8A, b"are you there")
