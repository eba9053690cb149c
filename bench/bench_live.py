"""Live path benchmark: WebSocket feed -> TardisMachineSource -> candles + features -> Redis ->
LiveFeatureStream.

    python -m bench.bench_live --rate 100000 --seconds 20 --symbols 10

A feed process (bench.live_feed) sends trades stamped with the current time at `--rate`
messages/s on loopback. The main flow (dataflows.main's build_flow, mode
streaming-candles-serve, Redis transport, timeframes 1s and the default seven) runs in this
process; LiveFeatureStream consumers read every symbol's 1s candles. Printed:
- sustained messages/s: ticks the flow took in (ticks_in_total) over the steady part of the
  run (after a warm-up second), next to the feed's offered rate;
- latency from interval end + allowed lateness to the candle arriving at the consumer,
  p50/p99/max over every 1s candle of every symbol.
Needs a Redis server: REDIS_URL, else redis://127.0.0.1:6379/0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _children_cpu(exclude: set[int]) -> float:
    """CPU seconds (user + system) of this process's live children not in `exclude`: the
    decoder processes of `--decoder process`."""
    me, total = os.getpid(), 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == me:
            total += (int(stat[11]) + int(stat[12])) / tick
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _consume_all(transport: str, redis_url: str, prefix: str, symbols: list[str],
                       until: float, lateness: float) -> list[tuple[float, float]]:
    """Read every symbol's 1s candles until `until`: (interval end, latency from end +
    lateness) of each."""
    from connectors import LiveFeatureStream

    latencies: list[tuple[float, float]] = []

    async def consume(sym: str) -> None:
        async with LiveFeatureStream(symbol=sym, timeframe="1s", exchange="binance-futures",
                                     transport=transport, redis_url=redis_url,  # type: ignore[arg-type]
                                     key_prefix=prefix, start="beginning",
                                     block_ms=20) as stream:
            it = stream.__aiter__()
            while time.time() < until:
                try:
                    c = await asyncio.wait_for(it.__anext__(), timeout=until - time.time())
                except TimeoutError:
                    return
                end = c["timestamp_out"].timestamp()
                latencies.append((end, time.time() - (end + lateness)))

    await asyncio.gather(*(consume(s) for s in symbols))
    return latencies


def _consumer_process(args: argparse.Namespace, redis_url: str) -> None:
    symbols = [f"SYM{i:03d}USDT" for i in range(args.symbols)]
    until = time.time() + args.seconds
    lat = asyncio.run(_consume_all("redis", redis_url, args.consume, symbols, until,
                                   args.lateness))
    print(json.dumps(lat), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=100_000)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--symbols", type=int, default=10)
    p.add_argument("--lateness", type=float, default=0.1, help="allowed lateness, seconds")
    p.add_argument("--transport", choices=["redis", "memory"], default="redis",
                   help="memory: consumers run in the flow's process; redis: in their own")
    p.add_argument("--batch-delay", default=None,
                   help="source.tardis_machine.max_batch_delay (default: streaming.yaml's)")
    p.add_argument("--decoder", choices=["thread", "process"], default=None,
                   help="source.tardis_machine.decoder (default: streaming.yaml's)")
    p.add_argument("--consume", help=argparse.SUPPRESS)  # internal: consumer process
    args = p.parse_args()
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if args.consume:
        _consumer_process(args, redis_url)
        return

    from bytewax.testing import run_main

    from dataflows.config import config_from_dict
    from dataflows.main import build_flow
    from dataflows.plan import plan_run
    from dataflows.runner import settle_heap
    from operators import metrics

    port = _free_port()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    symbols = [f"SYM{i:03d}USDT" for i in range(args.symbols)]
    source: dict = {"url": f"ws://127.0.0.1:{port}", "exchanges": {"binance-futures": symbols},
                    "data_types": ["trade"]}
    if args.batch_delay:
        source["max_batch_delay"] = args.batch_delay
    if args.decoder:
        source["decoder"] = args.decoder
    cfg = config_from_dict({
        "mode": "streaming-candles-serve",
        "source": {"kind": "tardis-machine", "tardis_machine": source},
        "candles": {"timeframes": ["1s", "15s", "1m", "5m", "15m", "1h", "4h", "1d"],
                    "allowed_lateness": args.lateness},
        "serve": {"transport": args.transport, "redis_url": redis_url, "key_prefix": prefix},
        "outputs": {"dead_letter_path": None},
        "monitoring": {"enabled": False},
    })
    plan = plan_run(cfg, env={})
    flow = build_flow(cfg, plan, flow_id="bench_live")
    metrics.reset_all()

    feed = subprocess.Popen([sys.executable, "-m", "bench.live_feed", "--port", str(port),
                             "--rate", str(args.rate), "--symbols", str(args.symbols),
                             "--seconds", str(args.seconds)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    consumer = None
    try:
        assert feed.stdout is not None
        feed.stdout.readline()  # "live feed on ..."
        settle_heap()  # as dataflows.runner.run does before a run
        threading.Thread(target=run_main, args=(flow,), daemon=True, name="flow").start()

        counts: list[tuple[float, float, float, float]] = []
        until = time.time() + args.seconds + 3
        if args.transport == "redis":  # consumers are other services: their own process
            consumer = subprocess.Popen(
                [sys.executable, "-m", "bench.bench_live", "--consume", prefix, "--symbols",
                 str(args.symbols), "--seconds", str(until - time.time()), "--lateness",
                 str(args.lateness)], cwd=ROOT, stdout=subprocess.PIPE, text=True)

        others = {feed.pid} | ({consumer.pid} if consumer is not None else set())

        async def sample() -> None:
            while time.time() < until:
                cpu = os.times()
                # /proc is read only for decoder processes: a scan costs the flow's process
                children = _children_cpu(others) if args.decoder == "process" else 0.0
                counts.append((time.time(), metrics.ROWS_IN.value(), cpu.user + cpu.system,
                               children))
                await asyncio.sleep(0.25)

        async def run_all() -> list[float]:
            tasks = [sample()]
            if consumer is None:
                tasks.append(_consume_all(args.transport, redis_url, prefix, symbols, until,
                                          args.lateness))
            results = await asyncio.gather(*tasks)
            return results[1] if consumer is None else []

        latencies = asyncio.run(run_all())
        if consumer is not None:
            out, _ = consumer.communicate(timeout=60)
            latencies = json.loads(out.strip().splitlines()[-1])
    finally:
        feed.kill()
        if consumer is not None and consumer.poll() is None:
            consumer.kill()
    t = np.array([c[0] for c in counts])
    n = np.array([c[1] for c in counts])
    active = np.flatnonzero(n > 0)
    if len(active) < 4:
        raise SystemExit("the flow took in no ticks: is the feed reachable?")
    first, last = active[0] + 4, active[-1]  # skip a warm-up second
    while last > first and n[last] == n[last - 1]:
        last -= 1
    rate = (n[last] - n[first]) / (t[last] - t[first])
    cpu = np.array([c[2] for c in counts])
    cpu_us = (cpu[last] - cpu[first]) / max(n[last] - n[first], 1) * 1e6
    dec = np.array([c[3] for c in counts])
    dec_us = (dec[last] - dec[first]) / max(n[last] - n[first], 1) * 1e6
    # the first two seconds of candles are warm-up (connections, first allocations)
    first_end = min((e for e, _ in latencies), default=0.0)
    warm = [(e, x) for e, x in latencies if e >= first_end + 2]
    print("slowest:", sorted(((round(x * 1000), round(e - first_end)) for e, x in latencies),
                             reverse=True)[:6])
    lat = np.array([x for _, x in warm]) * 1000
    print(f"offered {args.rate:,.0f} trade messages/s over {args.symbols} symbols for "
          f"{args.seconds:.0f} s; allowed lateness {args.lateness * 1000:.0f} ms")
    print("| measure | value |\n|---|---:|")
    print(f"| sustained ticks in (messages/s) | {rate:,.0f} |")
    print(f"| flow process CPU per message (us, all threads) | {cpu_us:.1f} |")
    if dec_us > 0:
        print(f"| decoder processes CPU per message (us) | {dec_us:.1f} |")
    print(f"| ticks in total | {int(n[-1]):,} |")
    print(f"| 1s candles received | {len(latencies):,} ({len(lat):,} after a 2 s warm-up) |")
    if len(lat):
        print(f"| latency p50 (ms) | {np.percentile(lat, 50):.1f} |")
        print(f"| latency p99 (ms) | {np.percentile(lat, 99):.1f} |")
        print(f"| latency max (ms) | {lat.max():.1f} |")
    if args.transport == "redis":  # leave the server as we found it
        import redis

        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    os._exit(0)  # the live flow never ends by itself


if __name__ == "__main__":
    main()
