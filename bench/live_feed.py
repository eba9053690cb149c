"""A live tardis-machine-style feed for benchmarks: trades stamped with the time they are sent.

    python -m bench.live_feed --port 8765 --rate 100000 --symbols 10 --seconds 30

Serves `/ws-stream-normalized` (any options are accepted): every millisecond it sends the
trades due by then, round-robin over the symbols, each stamped `timestamp` = send time (minus a
small exchange latency) and `localTimestamp` = send time, like a real exchange feed relayed by
tardis-machine. After `--seconds` it stops sending and keeps the connection open (a quiet
market), so wall-clock closing can be measured too. Runs in its own process, off the flow's GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime

from websockets.asyncio.server import ServerConnection, serve


def _iso(t: float) -> str:
    us = int(t * 1_000_000)
    s, micros = divmod(us, 1_000_000)
    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}Z"


def _write_frames(ws: ServerConnection, frames: list[str]) -> None:
    """Write RFC 6455 server text frames (unmasked, FIN) in one transport write: what
    websockets' send() produces per frame, without its per-call overhead."""
    out = []
    for f in frames:
        payload = f.encode()
        n = len(payload)
        head = bytes((0x81, n)) if n < 126 else bytes((0x81, 126)) + n.to_bytes(2, "big")
        out.append(head + payload)
    transport = ws.transport
    if not transport.is_closing():
        transport.write(b"".join(out))


async def _feed(ws: ServerConnection, rate: float, symbols: list[str], seconds: float,
                exchange: str) -> None:
    start = time.time()
    sent = 0
    i = 0
    ids = dict.fromkeys(symbols, 0)  # contiguous trade ids per symbol, as exchanges number them
    while True:
        now = time.time()
        if now - start >= seconds:
            break
        due = int((now - start) * rate)
        if due > sent:
            stamp, local = _iso(now - 0.001), _iso(now)
            frames = []
            for _ in range(due - sent):
                sym = symbols[i % len(symbols)]
                ids[sym] += 1
                frames.append(
                    f'{{"type":"trade","symbol":"{sym}","exchange":"{exchange}","id":"{ids[sym]}",'
                    f'"price":{100 + (i % 50) * 0.5},"amount":{1 + i % 5},'
                    f'"side":"{"buy" if i % 2 else "sell"}","timestamp":"{stamp}",'
                    f'"localTimestamp":"{local}"}}')
                i += 1
            _write_frames(ws, frames)
            sent = due
        await asyncio.sleep(0.001)
    print(f"sent {sent} trades in {time.time() - start:.1f} s", flush=True)
    await ws.wait_closed()


async def _main(port: int, rate: float, symbols: list[str], seconds: float,
                exchange: str) -> None:
    async def handler(ws: ServerConnection) -> None:
        await _feed(ws, rate, symbols, seconds, exchange)

    async with serve(handler, "127.0.0.1", port, max_size=None, compression=None):
        print(f"live feed on ws://127.0.0.1:{port}", flush=True)
        await asyncio.Future()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--rate", type=float, default=100_000, help="trades per second")
    p.add_argument("--symbols", type=int, default=10)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--exchange", default="binance-futures")
    a = p.parse_args()
    if a.rate <= 0 or a.symbols < 1 or a.seconds <= 0:
        raise SystemExit("--rate, --symbols and --seconds must be positive")
    syms = [f"SYM{i:03d}USDT" for i in range(a.symbols)]
    asyncio.run(_main(a.port, a.rate, syms, a.seconds, a.exchange))


if __name__ == "__main__":
    main()
