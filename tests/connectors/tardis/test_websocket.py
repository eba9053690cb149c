"""The tardis-machine WebSocket source against a real WebSocket server speaking its protocol.

No mocks: tests/connectors/tardis/ws_server.py serves real normalized messages (the shared
30 s BitMEX recording, the shared samples, synthetic trades) and misbehaves on cue (drops,
stalls, frozen sockets, garbage frames). Timeouts are short so the whole file runs in seconds.
"""

from __future__ import annotations

import asyncio
import gc
import pickle
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import bytewax.operators as op
import orjson
import pyarrow as pa
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from connectors.tardis.normalized import parse_iso_us
from connectors.tardis.websocket import (
    LiveTickStreamer,
    SourceStats,
    TardisMachineSource,
    _Connection,
    build_options,
    machine_url,
    public_url,
)
from dataflows.config import config_from_dict
from operators.messages import DeadLetters, Gap, TickBatch
from tests.conftest import shared_file
from tests.connectors.tardis.test_flat import message
from tests.connectors.tardis.ws_server import (
    REPLAY_PATH,
    Recorded,
    Script,
    TardisMachineServer,
    load_jsonl,
    parse_options,
    recorded,
    synthetic_trades,
)

BITMEX_TYPES = ["trade", "book_change", "book_snapshot_5_1000ms"]
FAST = {"reconnect_initial_delay": "5ms", "reconnect_max_delay": "50ms", "open_timeout": "2s"}


@pytest.fixture(scope="module")
def bitmex() -> list[Recorded]:
    return load_jsonl(shared_file("tardis-machine/bitmex_XBTUSD_2021-07-22_normalized.jsonl"))


@pytest.fixture
def no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TARDIS_MACHINE_URL", raising=False)


#: Selected tests run with frames decoded in the flow's process and in a decoder process.
DECODERS = pytest.mark.parametrize("decoder", ["thread", "process"])


def source_for(server: TardisMachineServer, **kw: Any) -> TardisMachineSource:
    settings: dict[str, Any] = {"url": server.url, "exchanges": {"bitmex": ["XBTUSD"]},
                                "data_types": BITMEX_TYPES, "stop_on_normal_close": True, **FAST}
    settings.update(kw)
    return TardisMachineSource(**settings)


def run_flow(source: TardisMachineSource) -> list[Any]:
    """Run the source in a real Bytewax dataflow until the stream ends; return its items."""
    flow = Dataflow("tardis_machine_test")
    stream = op.input("inp", flow, source)
    out: list[Any] = []
    op.output("out", stream, TestingSink(out))
    run_main(flow)
    return out


def poll(part: Any, until: float = 10.0) -> Iterator[list[Any]]:
    """Call next_batch like Bytewax does until StopIteration (or fail after `until` s)."""
    deadline = time.monotonic() + until
    while True:
        assert time.monotonic() < deadline, "source did not finish in time"
        try:
            yield part.next_batch()
        except StopIteration:
            return
        time.sleep(0.001)


def ticks(items: list[Any], data_type: str) -> pa.Table:
    batches = [i.batch for i in items if isinstance(i, TickBatch) and i.data_type == data_type]
    return pa.Table.from_batches(batches)


def expected_rows(messages: list[Recorded]) -> dict[str, list[tuple[Any, ...]]]:
    """Per data type, the rows the source must emit for these messages, built from the JSON."""
    rows: dict[str, list[tuple[Any, ...]]] = {"trades": [], "incremental_book_L2": [],
                                              "book_snapshot_5": []}
    for m in messages:
        d = orjson.loads(m.data)
        ts, lts = parse_iso_us(d["timestamp"]), parse_iso_us(d["localTimestamp"])
        if d["type"] == "trade":
            rows["trades"].append((ts, lts, d["id"], d["side"], float(d["price"]),
                                   float(d["amount"])))
        elif d["type"] == "book_change":
            for key, side in (("asks", "ask"), ("bids", "bid")):
                for lv in d[key]:
                    rows["incremental_book_L2"].append(
                        (ts, lts, d["isSnapshot"], side, float(lv["price"]),
                         float(lv["amount"])))
        elif d["type"] == "book_snapshot":
            rows["book_snapshot_5"].append(
                (ts, lts, *(float(d[s][i]["price"]) for i in range(5) for s in ("asks",))))
    return rows


def emitted_rows(items: list[Any]) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    t = ticks(items, "trades")
    out["trades"] = list(zip(*(t.column(c).cast(pa.int64()).to_pylist() if i < 2
                               else t.column(c).to_pylist()
                               for i, c in enumerate(["timestamp", "local_timestamp", "id",
                                                      "side", "price", "amount"])), strict=True))
    b = ticks(items, "incremental_book_L2")
    out["incremental_book_L2"] = list(zip(
        *(b.column(c).cast(pa.int64()).to_pylist() if i < 2 else b.column(c).to_pylist()
          for i, c in enumerate(["timestamp", "local_timestamp", "is_snapshot", "side", "price",
                                 "amount"])), strict=True))
    s = ticks(items, "book_snapshot_5")
    out["book_snapshot_5"] = list(zip(
        s.column("timestamp").cast(pa.int64()).to_pylist(),
        s.column("local_timestamp").cast(pa.int64()).to_pylist(),
        *(s.column(f"asks_{i}_price").to_pylist() for i in range(5)), strict=True))
    return out


# --------------------------------------------------------------------------------------------
# options, URLs, configuration errors


def test_options_follow_tardis_machine_and_round_trip_through_the_query(no_env_url):
    src = TardisMachineSource(exchanges={"bitmex": ["XBTUSD", "ETHUSD"], "deribit": []},
                              data_types=["trade", "book_snapshot_10_100ms"])
    options = build_options(src.settings, ["bitmex", "deribit"])
    assert options == [
        {"exchange": "bitmex", "symbols": ["XBTUSD", "ETHUSD"],
         "dataTypes": ["trade", "book_snapshot_10_100ms"], "withDisconnectMessages": True},
        {"exchange": "deribit", "dataTypes": ["trade", "book_snapshot_10_100ms"],
         "withDisconnectMessages": True},
    ]
    url = machine_url("ws://user:secret@tm.local:8001", options, replay=False)
    assert url.startswith("ws://user:secret@tm.local:8001/ws-stream-normalized?options=%5B")
    assert parse_options(url.split("?", 1)[1]) == options
    assert public_url(url) == "ws://tm.local:8001/ws-stream-normalized"
    assert src.url == "ws://localhost:8001/ws-stream-normalized"  # tardis-machine's WS port

    replay = TardisMachineSource(exchanges={"bitmex": ["XBTUSD"]}, data_types=["trade"],
                                 replay_from="2021-07-22T22:36:00Z",
                                 replay_to="2021-07-22T22:37:00Z")
    opts = build_options(replay.settings, ["bitmex"], {"bitmex": "2021-07-22T22:36:00.000Z"})
    assert opts[0]["from"] == "2021-07-22T22:36:00.000Z"
    assert opts[0]["to"] == "2021-07-22T22:37:00Z"
    assert replay.url.endswith(REPLAY_PATH)


def test_url_from_environment_overrides_config(monkeypatch):
    monkeypatch.setenv("TARDIS_MACHINE_URL", "wss://tm.example:443/")
    cfg = config_from_dict({"source": {"tardis_machine": {
        "exchanges": {"bitmex": ["XBTUSD"]}, "stale_timeout": "2s", "max_batch_delay": "5ms"}}})
    assert cfg.source.tardis_machine.stale_timeout == 2_000_000
    src = TardisMachineSource.from_config(cfg)
    assert src.settings.url == "wss://tm.example:443"
    assert src.settings == cfg.source.tardis_machine.model_copy(update={"url": src.settings.url})
    assert TardisMachineSource.from_config(cfg, url="ws://explicit:1").settings.url == (
        "ws://explicit:1")
    monkeypatch.setenv("TARDIS_MACHINE_URL", "http://not-a-websocket")
    with pytest.raises(ValueError, match=r"url from TARDIS_MACHINE_URL.*\n  url: expected a "
                                         r"ws:// or wss:// URL"):
        TardisMachineSource.from_config(cfg)


@pytest.mark.parametrize(("settings", "message"), [
    ({"exchanges": {}}, "no exchanges configured"),
    ({"data_types": ["trade", "bookchange"]},
     "data_types: unknown tardis-machine data type 'bookchange'"),
    ({"data_types": ["trade_bar_1m"]}, "the flow builds its own candles from 'trade'"),
    ({"replay_from": "2021-07-22"}, "replay_from and replay_to go together"),
    ({"replay_from": "2021-07-23", "replay_to": "2021-07-22"}, "replay_from must be before"),
    ({"replay_from": "22/07/2021", "replay_to": "2021-07-23"},
     "replay_from: expected an ISO 8601 date"),
    ({"url": "ws://h:1/?options=x"}, "must not carry a query"),
    ({"exchanges": {"bitmex": ["XBTUSD", "XBTUSD"]}}, "bitmex: a symbol is listed twice"),
    ({"max_batch_rows": 0}, "max_batch_rows: Input should be greater than or equal to 1"),
    ({"stale_timeout": "soon"}, "stale_timeout: expected a duration"),
    ({"bogus": 1}, "bogus: unknown key"),
])
def test_invalid_settings_are_clear_errors(no_env_url, settings, message):
    kw = {"exchanges": {"bitmex": ["XBTUSD"]}, **settings}
    with pytest.raises(ValueError, match=message) as err:
        TardisMachineSource(**kw)
    assert "Traceback" not in str(err.value)


def test_routes_keep_only_the_data_types_the_flow_uses(no_env_url):
    cfg = config_from_dict({"source": {"tardis_machine": {
        "exchanges": {"bitmex": ["XBTUSD"]},
        "data_types": ["trade", "book_change", "book_snapshot_5_100ms", "quote"]}}})
    section = cfg.source.tardis_machine
    src = TardisMachineSource.from_config(section, routes=["trades", "book_snapshots", "gaps"])
    assert src.settings.data_types == ["trade", "book_snapshot_5_100ms"]
    assert TardisMachineSource.from_config(cfg).settings.data_types == section.data_types
    with pytest.raises(ValueError, match="none of data_types .* feeds an enabled route"):
        TardisMachineSource.from_config(section, routes=["liquidations"])


def test_compatibility_name():
    assert LiveTickStreamer is TardisMachineSource


# --------------------------------------------------------------------------------------------
# the test server's protocol


def test_server_refuses_bad_options_like_tardis_machine(bitmex):
    async def attempt(url: str) -> str:
        try:
            async with connect(url, open_timeout=2) as ws:
                await ws.recv()
        except InvalidStatus as e:
            return f"{e.response.status_code} {e.response.body.decode().strip()}"
        except ConnectionClosedError as e:
            assert e.rcvd is not None
            return f"{e.rcvd.code} {e.rcvd.reason}"
        return "accepted"

    with TardisMachineServer(bitmex) as server:
        base = server.url + "/ws-stream-normalized"
        assert asyncio.run(attempt(base)) == "400 missing 'options' query parameter"
        assert asyncio.run(attempt(base + "?options=%7Bexchange")).startswith(
            "400 'options' is not valid JSON")
        bad_type = machine_url(server.url, [{"exchange": "bitmex", "dataTypes": ["trades"]}],
                               replay=False)
        assert asyncio.run(attempt(bad_type)) == "1011 Error: invalid data type: trades"
        no_from = machine_url(server.url, [{"exchange": "bitmex", "dataTypes": ["trade"]}],
                              replay=True)
        assert asyncio.run(attempt(no_from)).startswith('1011 Error: Invalid "from" argument')
        assert asyncio.run(attempt(server.url + "/ws-replay?options=%5B%5D")).startswith("404")


def test_server_filters_by_exchange_symbol_and_data_type(bitmex):
    async def receive(url: str) -> list[dict[str, Any]]:
        async with connect(url) as ws:
            return [orjson.loads(m) async for m in ws]

    extra = recorded([{**orjson.loads(bitmex[0].data), "symbol": "ETHUSD"}])
    with TardisMachineServer(bitmex + extra) as server:
        url = machine_url(server.url, [{"exchange": "bitmex", "symbols": ["xbtusd"],
                                        "dataTypes": ["trade"]}], replay=False)
        got = asyncio.run(receive(url))
    assert len(got) == 15 and {(m["type"], m["symbol"]) for m in got} == {("trade", "XBTUSD")}


# --------------------------------------------------------------------------------------------
# the recording through a real Bytewax dataflow


@DECODERS
@pytest.mark.parametrize("replay", [False, True], ids=["live", "replay"])
def test_bitmex_recording_gives_every_row_exactly_once(bitmex, no_env_url, replay, decoder):
    extra = {"replay_from": "2021-07-22T22:36:10Z", "replay_to": "2021-07-22T22:37:00Z"} if (
        replay) else {}
    with TardisMachineServer(bitmex) as server:
        source = source_for(server, max_batch_rows=200, decoder=decoder, **extra)
        items = run_flow(source)
        assert [c.path for c in server.connections] == [
            "/ws-replay-normalized" if replay else "/ws-stream-normalized"]
    assert all(isinstance(i, TickBatch) for i in items)
    assert emitted_rows(items) == expected_rows(bitmex)
    assert len(ticks(items, "incremental_book_L2")) == sum(
        len(d["asks"]) + len(d["bids"]) for d in map(orjson.loads, (m.data for m in bitmex))
        if d["type"] == "book_change")
    for item in items:
        assert item.exchange == "bitmex" and item.symbol == "XBTUSD"
        assert item.source == source.url and "?" not in item.source
        assert item.lines is None
    stats = source.stats
    assert (stats.messages, stats.malformed, stats.gaps, stats.connects) == (1344, 0, 0, 1)
    assert stats.rows == 15 + 29 + len(ticks(items, "incremental_book_L2"))
    assert stats.batches == len(items)


def test_batches_are_bounded_by_max_rows(bitmex, no_env_url):
    with TardisMachineServer(bitmex) as server:
        items = run_flow(source_for(server, max_batch_rows=50, max_batch_delay="10s"))
    book = [i for i in items if i.data_type == "incremental_book_L2"]
    biggest_message = max(len(d["asks"]) + len(d["bids"])
                          for d in map(orjson.loads, (m.data for m in bitmex))
                          if d["type"] == "book_change")
    assert len(book) > 10
    assert all(len(b) < 50 + biggest_message for b in book)
    assert all(len(i) <= 50 for i in items if i.data_type == "trades")


def test_one_streamer_covers_several_exchanges(bitmex, no_env_url):
    deribit = orjson.loads(shared_file("tardis-machine/derivative_ticker.json").read_bytes())
    messages = bitmex[:200] + recorded([deribit])
    for per_exchange in (False, True):
        with TardisMachineServer(messages) as server:
            source = source_for(server, exchanges={"bitmex": ["XBTUSD"],
                                                   "deribit": ["BTC-PERPETUAL"]},
                                data_types=["trade", "book_change", "derivative_ticker"],
                                connection_per_exchange=per_exchange)
            items = run_flow(source)
            opts = [c.options for c in server.connections]
        kinds = Counter((i.exchange, i.data_type) for i in items)
        assert set(kinds) == {("bitmex", "incremental_book_L2"), ("bitmex", "trades"),
                              ("deribit", "derivative_ticker")}
        if per_exchange:
            assert sorted(o[0]["exchange"] for o in opts) == ["bitmex", "deribit"]
        else:
            assert [[o["exchange"] for o in opts[0]]] == [["bitmex", "deribit"]]
        snapshots = sum(m.type == "book_snapshot" for m in bitmex[:200])  # not subscribed
        assert source.stats.messages == 200 - snapshots + 1


# --------------------------------------------------------------------------------------------
# connection life


def last_ts_before(messages: list[Recorded], end: int) -> int:
    """Exchange timestamp the source holds as 'last message' of XBTUSD after messages[:end]:
    the latest of the last timestamps of each data type."""
    last: dict[str, int] = {}
    for m in messages[:end]:
        d = orjson.loads(m.data)
        last[d.get("name") or d["type"]] = parse_iso_us(d["timestamp"])
    return max(last.values())


@DECODERS
@pytest.mark.parametrize("drop_code", [None, 1011], ids=["tcp-drop", "close-1011"])
def test_dropped_connection_gives_gap_and_reconnect_without_loss_or_duplicates(
        bitmex, no_env_url, drop_code, decoder):
    k, lost = 400, 25
    with TardisMachineServer(bitmex, scripts=[Script(drop_after=k, drop_code=drop_code)],
                             lost_on_drop=lost) as server:
        source = source_for(server, decoder=decoder)
        items = run_flow(source)
        first, second = server.connections
    assert len(first.sent) == k and second.sent[0] == k + lost
    delivered = bitmex[:k] + bitmex[k + lost:]
    assert emitted_rows(items) == expected_rows(delivered)
    gaps = [i for i in items if isinstance(i, Gap)]
    assert len(gaps) == 1
    gap = gaps[0]
    assert (gap.exchange, gap.symbol) == ("bitmex", "XBTUSD")
    assert gap.start_us == last_ts_before(bitmex, k)
    assert gap.end_us == parse_iso_us(orjson.loads(bitmex[k + lost].data)["timestamp"])
    assert gap.reason.startswith("connection lost: ")
    assert ("1011" in gap.reason) if drop_code else ("without a close frame" in gap.reason)
    # the gap comes before any row received after the reconnect
    gap_at = items.index(gap)
    after = [i for i in items[gap_at:] if isinstance(i, TickBatch)]
    assert after and all(pa.compute.min(i.batch.column("local_timestamp")).value
                         >= parse_iso_us(orjson.loads(bitmex[k + lost].data)["localTimestamp"])
                         for i in after)
    stats = source.stats
    assert (stats.connects, stats.reconnects, stats.gaps) == (2, 1, 1)


def test_replay_resumes_after_a_drop_with_nothing_lost_or_repeated(bitmex, no_env_url):
    with TardisMachineServer(bitmex, scripts=[Script(drop_after=500)]) as server:
        source = source_for(server, replay_from="2021-07-22T22:36:10Z",
                            replay_to="2021-07-22T22:37:00Z")
        items = run_flow(source)
        first, second = server.connections
    # tardis-machine replays whole minutes: the resumed request starts at the minute...
    assert second.options is not None and second.options[0]["from"] == "2021-07-22T22:36:00.000Z"
    assert second.sent[0] == 0
    # ...and the source skips what it already had: every row exactly once, no gap
    assert emitted_rows(items) == expected_rows(bitmex)
    assert not any(isinstance(i, Gap) for i in items)
    assert source.stats.duplicates_skipped == 500
    assert source.stats.reconnects == 1


def test_stall_beyond_stale_timeout_reconnects_with_a_gap(bitmex, no_env_url):
    k = 60
    with TardisMachineServer(bitmex, scripts=[Script(stall_after=k, stall_seconds=1.5)]
                             ) as server:
        source = source_for(server, stale_timeout="200ms", ping_interval="5s")
        part = source.build_part("inp", "tardis-machine", None)
        items: list[Any] = []
        calls: list[tuple[float, int]] = []  # (duration, items returned) per next_batch
        deadline = time.monotonic() + 10
        # A full collection of this test process's heap (hundreds of thousands of objects
        # left by earlier tests) can pause any call for ~0.4 s; that is not the source's doing.
        gc.collect()
        gc.disable()
        try:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    out = part.next_batch()
                except StopIteration:
                    break
                calls.append((time.perf_counter() - t0, len(out)))
                items += out
                time.sleep(0.001)
        finally:
            gc.enable()
            part.close()
        assert len(server.connections) == 2
    gaps = [i for i in items if isinstance(i, Gap)]
    assert len(gaps) == 1 and gaps[0].reason.startswith("connection lost: stale: no message")
    assert gaps[0].start_us == last_ts_before(bitmex, k)
    assert emitted_rows(items) == expected_rows(bitmex)  # live feed waited: nothing lost
    # next_batch never waits on the network: while the socket was silent (0.2 s until the
    # stale timeout) the calls kept returning at once with nothing (~1 ms apart; a call that
    # waited for frames would return once, after the silence)...
    assert sum(1 for _, n in calls if n == 0) >= 50
    # ...and no call lasted anywhere near the stall or the 0.2 s stale timeout
    durations = sorted(d for d, _ in calls)
    assert durations[len(durations) * 9 // 10] < 0.005
    assert durations[-1] < 0.15


def test_frozen_socket_is_found_by_ping_timeout(bitmex, no_env_url):
    k = 30
    with TardisMachineServer(bitmex, scripts=[
            Script(stall_after=k, stall_seconds=2, freeze_socket=True)]) as server:
        source = source_for(server, stale_timeout=0, ping_interval="100ms",
                            ping_timeout="150ms")
        t0 = time.monotonic()
        items = run_flow(source)
        elapsed = time.monotonic() - t0
        assert len(server.connections) == 2
    gaps = [i for i in items if isinstance(i, Gap)]
    assert len(gaps) == 1 and "no pong within ping_timeout" in gaps[0].reason
    assert elapsed < 1.5  # found well before the server's 2 s freeze ends
    assert emitted_rows(items) == expected_rows(bitmex)


def test_quiet_symbol_is_not_a_dead_socket(no_env_url):
    # ETHUSD trades once at the start, XBTUSD keeps trading for 3 stale timeouts
    messages = synthetic_trades(1, symbols=("ETHUSD",)) + synthetic_trades(
        300, symbols=("XBTUSD",), start_us=1_626_993_360_001_000)
    with TardisMachineServer(messages, pace=1000) as server:
        source = source_for(server, exchanges={"bitmex": ["XBTUSD", "ETHUSD"]},
                            data_types=["trade"], stale_timeout="100ms")
        items = run_flow(source)
        assert len(server.connections) == 1
    stats = source.stats
    assert (stats.connects, stats.gaps, stats.messages) == (1, 0, 301)
    assert not any(isinstance(i, Gap) for i in items)
    now = time.time()
    assert stats.message_age("bitmex:ETHUSD", now) > stats.message_age("bitmex:XBTUSD", now) + 0.2
    assert stats.message_age("bitmex:SOLUSD", now) is None


@DECODERS
def test_garbage_frames_are_quarantined_counted_and_the_stream_continues(bitmex, no_env_url,
                                                                        decoder):
    trade = next(orjson.loads(m.data) for m in bitmex if m.type == "trade")
    garbage: dict[int, str | bytes] = {
        5: "this is not json",
        10: b"\x00\xff\xfe binary frame",
        15: "[1, 2, 3]",
        20: orjson.dumps({"type": "trade", "exchange": "bitmex"}).decode(),
        25: orjson.dumps({**trade, "type": "book_ticker"}).decode(),
        30: orjson.dumps({**trade, "price": "32180.5"}).decode(),
    }
    with TardisMachineServer(bitmex, scripts=[Script(garbage=garbage)]) as server:
        source = source_for(server, decoder=decoder)
        items = run_flow(source)
        assert server.connections[0].garbage_sent == 6
    assert emitted_rows(items) == expected_rows(bitmex)  # every real message still delivered
    letters = [i for i in items if isinstance(i, DeadLetters)]
    rows = pa.Table.from_batches([d.batch for d in letters]).to_pylist()
    assert len(rows) == 6
    by_raw = {r["raw"]: r for r in rows}
    assert by_raw["this is not json"]["reason"].startswith("invalid JSON")
    assert by_raw["\x00\ufffd\ufffd binary frame"]["reason"].startswith("invalid JSON")
    assert by_raw["[1, 2, 3]"]["reason"] == "expected a JSON object, got list"
    assert by_raw[garbage[20]]["reason"] == "message has no 'symbol'"
    assert by_raw[garbage[25]]["reason"] == "unsupported message type 'book_ticker'"
    assert by_raw[garbage[30]]["reason"] == "price: expected a number, got '32180.5'"
    assert by_raw[garbage[30]]["data_type"] == "trades"
    assert {r["kind"] for r in rows} == {"rejected"}
    assert {r["source"] for r in rows} == {source.url}
    stats = source.stats
    assert (stats.malformed, stats.rejected, stats.dead_letters) == (5, 1, 6)
    assert stats.connects == 1 and stats.gaps == 0


def test_fragmented_messages_are_assembled_in_order(bitmex, no_env_url):
    # tardis-machine sends one frame per message; a fragmented one must still arrive whole
    # and in order (the source then leaves its direct frame path for websockets' assembler)
    with TardisMachineServer(bitmex, scripts=[Script(fragmented=frozenset({3, 700}))]
                             ) as server:
        source = source_for(server)
        items = run_flow(source)
    assert emitted_rows(items) == expected_rows(bitmex)
    assert source.stats.malformed == 0


def test_tardis_disconnect_message_becomes_a_gap(no_env_url):
    ticker = orjson.loads(shared_file("tardis-machine/derivative_ticker.json").read_bytes())
    disconnect = orjson.loads(shared_file("tardis-machine/disconnect.json").read_bytes())
    assert disconnect["exchange"] == ticker["exchange"] == "deribit"
    after = {**ticker, "timestamp": "2019-10-23T11:35:02.100Z",
             "localTimestamp": "2019-10-23T11:35:02.150Z", "markPrice": 7990.0}
    with TardisMachineServer(recorded([ticker, disconnect, after])) as server:
        source = source_for(server, exchanges={"deribit": ["BTC-PERPETUAL"]},
                            data_types=["derivative_ticker"])
        items = run_flow(source)
    gaps = [i for i in items if isinstance(i, Gap)]
    assert gaps == [Gap("deribit", "BTC-PERPETUAL", parse_iso_us(ticker["timestamp"]),
                        parse_iso_us(after["timestamp"]),
                        "tardis-machine disconnect message: deribit feed disconnected at "
                        "2019-10-23T11:34:29.416Z", source.url)]
    kinds = [type(i).__name__ for i in items]
    assert kinds == ["TickBatch", "Gap", "TickBatch"]  # rows before, the gap, rows after
    assert source.stats.disconnect_messages == 1


def test_server_refusal_is_retried_and_reported(no_env_url, bitmex):
    with TardisMachineServer(bitmex) as server:
        source = source_for(server, url=server.url + "/behind-a-proxy")
        part = source.build_part("inp", "tardis-machine", None)
        try:
            deadline = time.monotonic() + 5
            while source.stats.connect_failures < 3 and time.monotonic() < deadline:
                assert part.next_batch() == []
                time.sleep(0.005)
        finally:
            part.close()
    stats = source.stats
    assert stats.connect_failures >= 3 and stats.connects == 0
    assert stats.last_error == ("tardis-machine refused the request: HTTP 404 no endpoint "
                                "/behind-a-proxy/ws-stream-normalized")


def test_backoff_is_exponential_with_full_jitter(no_env_url):
    src = TardisMachineSource(exchanges={"bitmex": ["XBTUSD"]}, reconnect_initial_delay="100ms",
                              reconnect_max_delay="1s")
    conn = _Connection(src.settings, lambda: "", __import__("collections").deque(), SourceStats(),
                       False, False, "test")
    conn._random = random.Random(7)
    for attempt, cap in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (50, 1.0)]:
        delays = [conn.backoff_delay(attempt) for _ in range(400)]
        assert 0 <= min(delays) < cap * 0.05  # full jitter reaches down to zero
        assert cap * 0.95 < max(delays) <= cap  # and up to the exponential cap


# --------------------------------------------------------------------------------------------
# snapshots (resume state)


def collect_until(part: Any, n_items: int) -> list[Any]:
    items: list[Any] = []
    for batch in poll(part):
        items += batch
        if len(items) >= n_items:
            break
    return items


@DECODERS
def test_replay_restart_from_snapshot_gives_every_row_exactly_once(bitmex, no_env_url,
                                                                  decoder):
    replay = {"replay_from": "2021-07-22T22:36:10Z", "replay_to": "2021-07-22T22:37:00Z"}
    with TardisMachineServer(bitmex, pace=20_000) as server:
        # long delay, small max rows: some groups are always pending at snapshot time
        source = source_for(server, max_batch_rows=300, max_batch_delay="1h",
                            decoder=decoder, **replay)
        part = source.build_part("inp", "tardis-machine", None)
        first = collect_until(part, 8)
        state = pickle.loads(pickle.dumps(part.snapshot()))
        part.close()
        assert len(pickle.dumps(state)) < 2000
        resumed = source_for(server, max_batch_rows=300, max_batch_delay="1h",
                             decoder=decoder, **replay)
        part2 = resumed.build_part("inp", "tardis-machine", state)
        rest = [i for b in poll(part2) for i in b]
        assert server.connections[1].options[0]["from"] == "2021-07-22T22:36:00.000Z"
    assert emitted_rows(first + rest) == expected_rows(bitmex)
    assert resumed.stats.duplicates_skipped > 0


@DECODERS
def test_live_restart_from_snapshot_opens_a_restart_gap(bitmex, no_env_url, decoder):
    k = 200
    # the first connection gets k messages, then the feed stalls while the process "crashes"
    with TardisMachineServer(bitmex, scripts=[Script(stall_after=k, stall_seconds=30)]
                             ) as server:
        source = source_for(server, max_batch_delay="0s", decoder=decoder)
        part = source.build_part("inp", "tardis-machine", None)
        first: list[Any] = []
        for batch in poll(part):
            first += batch
            if source.stats.messages == k:  # max_batch_delay 0: all emitted
                break
        state = pickle.loads(pickle.dumps(part.snapshot()))
        part.close()
        resumed = source_for(server, decoder=decoder)
        rest = [i for b in poll(resumed.build_part("inp", "tardis-machine", state)) for i in b]
        assert server.connections[1].sent[0] == k
    assert emitted_rows(first) == expected_rows(bitmex[:k])
    assert emitted_rows(rest) == expected_rows(bitmex[k:])
    gap = rest[0]
    assert isinstance(gap, Gap) and gap.reason == "restart: resumed from a snapshot"
    assert gap.start_us == last_ts_before(bitmex, k)
    assert gap.end_us == parse_iso_us(orjson.loads(bitmex[k].data)["timestamp"])
    assert sum(isinstance(i, Gap) for i in rest) == 1


def test_a_killed_decoder_process_stops_the_source_with_a_clear_error(bitmex, no_env_url):
    import os
    import signal

    with TardisMachineServer(bitmex, scripts=[Script(stall_after=100, stall_seconds=30)]
                             ) as server:
        part = source_for(server, decoder="process").build_part("inp", "tardis-machine", None)
        try:
            got = collect_until(part, 1)
            assert got and all(isinstance(i, TickBatch) for i in got)
            proc = part._decoder._proc
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(5)
            with pytest.raises(RuntimeError, match=r"decoder process exited unexpectedly "
                                                   r"\(exit code -9\)"):
                for _ in poll(part):
                    pass
        finally:
            part.close()


# --------------------------------------------------------------------------------------------
# bulk decoding (connectors.tardis.flat) against decoding one frame at a time


def _assemble(steps: list[Any], replay: bool, max_rows: int, bulk: bool) -> dict[str, Any]:
    """Feed `steps` (lists of frames, or "lost" for a dropped connection) to an assembler;
    what it emitted, its stats and its snapshots (before and after the final flush)."""
    from connectors.tardis import websocket as ws
    from dataflows.config import TardisMachineSource as Settings

    settings = Settings(max_batch_rows=max_rows, max_batch_delay="1h",
                        **({"replay_from": "2024-03-01T00:00:00Z",
                            "replay_to": "2024-04-01T00:00:00Z"} if replay else {}))
    stats = SourceStats()
    saved = ws._MIN_BULK
    ws._MIN_BULK = ws._MIN_BULK if bulk else 1 << 62
    try:
        asm = ws._Assembler(settings, ["binance", "deribit"], "test", stats, None)
        for step in steps:
            if step == "lost":
                asm.on_event(ws._Disconnected("test drop"))
            else:
                asm.on_frames(list(step))
        before = asm.snapshot()
        asm.flush_all()
        after = asm.snapshot()
        out = asm.take_output()
    finally:
        ws._MIN_BULK = saved
    ticks: dict[tuple[str, str, str], list[pa.RecordBatch]] = {}
    for item in out:
        if isinstance(item, TickBatch):
            ticks.setdefault((item.exchange, item.symbol, item.data_type), []).append(
                item.batch)
    dead = sorted(tuple(r.values()) for item in out if isinstance(item, DeadLetters)
                  for r in item.batch.to_pylist())
    return {
        "ticks": {key: pa.Table.from_batches(b) for key, b in ticks.items()},
        "sizes": [len(i) for i in out if isinstance(i, TickBatch)
                  and i.data_type != "incremental_book_L2"],
        "gaps": [(g.exchange, g.symbol, g.start_us, g.end_us, g.reason) for g in out
                 if isinstance(g, Gap)],
        "dead": dead,
        "stats": {k: v for k, v in stats.as_dict().items()
                  if k not in ("batches", "last_message_wall", "queue_depth")},
        "snapshots": (before, after),
    }


@st.composite
def _feed(draw: st.DrawFn) -> list[Any]:
    locals_ = [f"2024-03-02T00:00:0{i}.000Z" for i in range(4)]
    extra = [orjson.dumps(orjson.loads(shared_file(f"tardis-machine/{n}").read_bytes()))
             for n in ("book_change.json", "disconnect.json")] + [b"garbage", b"{}"]

    def trade() -> bytes:
        return orjson.dumps({
            "type": "trade", "exchange": draw(st.sampled_from(["binance", "deribit"])),
            "symbol": draw(st.sampled_from(["BTCUSDT", "ETHUSDT", "SOLUSDT"])),
            "id": str(draw(st.integers(0, 99))), "price": draw(st.sampled_from([1.5, 2, -1])),
            "amount": 1, "side": draw(st.sampled_from(["buy", "sell", "buy", "what"])),
            "timestamp": draw(st.sampled_from(locals_)),
            "localTimestamp": locals_[draw(st.integers(0, 3))]})

    frames = []
    for _ in range(draw(st.integers(1, 120))):
        pick = draw(st.integers(0, 19))
        frames.append(trade() if pick < 14 else draw(message()) if pick < 18
                      else draw(st.sampled_from(extra)))
    steps: list[Any] = []
    i = 0
    while i < len(frames):
        j = min(len(frames), i + draw(st.integers(1, 60)))
        steps.append(frames[i:j])
        if draw(st.integers(0, 4)) == 0:
            steps.append("lost")
            back = draw(st.integers(0, j))  # a replay resends from before the drop
            steps.append(frames[back:j])
        i = j
    return steps


@given(_feed(), st.booleans(), st.sampled_from([7, 1_000_000]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_bulk_decoding_gives_what_decoding_each_frame_gives(steps, replay, max_rows):
    bulk = _assemble(steps, replay, max_rows, bulk=True)
    single = _assemble(steps, replay, max_rows, bulk=False)
    assert bulk["ticks"].keys() == single["ticks"].keys()
    for key, table in bulk["ticks"].items():
        assert table.equals(single["ticks"][key]), key
    assert bulk["gaps"] == single["gaps"]
    assert bulk["dead"] == single["dead"]
    assert bulk["stats"] == single["stats"]
    assert all(n <= max_rows for n in bulk["sizes"])
    if max_rows > 1000:  # no flush before the end: the positions are the same too
        assert bulk["snapshots"] == single["snapshots"]
    else:
        assert bulk["snapshots"][1] == single["snapshots"][1]


def test_a_failing_bulk_build_falls_back_to_decoding_each_frame(monkeypatch, caplog):
    from connectors.tardis.flat import FlatScan

    frames = [orjson.dumps({"type": "trade", "exchange": "binance", "symbol": f"S{i % 2}",
                            "id": str(i), "price": 1.5 if i != 7 else -1, "amount": 1,
                            "side": "buy", "timestamp": "2024-03-02T00:00:00Z",
                            "localTimestamp": f"2024-03-02T00:00:0{i // 10}Z"})
              for i in range(30)]
    expected = _assemble([frames], replay=False, max_rows=1_000_000, bulk=False)

    def boom(self: Any, data_type: str, rows: Any) -> Any:
        raise RuntimeError("a bug in the bulk decoder")

    monkeypatch.setattr(FlatScan, "build", boom)
    got = _assemble([frames], replay=False, max_rows=1_000_000, bulk=True)
    assert "bulk decoding failed" in caplog.text
    assert got["ticks"].keys() == expected["ticks"].keys() and len(got["ticks"]) == 2
    for key, table in got["ticks"].items():
        assert table.equals(expected["ticks"][key])
    assert got["dead"] == expected["dead"] and len(got["dead"]) == 1
    assert got["stats"] == expected["stats"] and got["snapshots"] == expected["snapshots"]


def test_a_candle_close_time_flushes_micro_batches_before_their_delay(monkeypatch):
    from connectors.tardis import websocket as ws
    from dataflows.config import TardisMachineSource as Settings
    from operators import clock

    monkeypatch.setattr(clock, "_NEEDS", {})  # no candle step of another test
    frames = [orjson.dumps({"type": "trade", "exchange": "binance", "symbol": f"S{i % 2}",
                            "id": str(i), "price": 1.5, "amount": 1, "side": "buy",
                            "timestamp": "2024-03-02T00:00:00Z",
                            "localTimestamp": "2024-03-02T00:00:00Z"}) for i in range(20)]
    asm = ws._Assembler(Settings(max_batch_delay="1h"), ["binance"], "test", SourceStats(),
                        None)

    def emitted() -> int:
        return sum(len(i) for i in asm.take_output() if isinstance(i, TickBatch))

    asm.on_frames(frames)
    asm.flush_due()
    assert emitted() == 0  # the micro-batch waits for its delay (an hour)
    now = time.time_ns() // 1000
    clock.need(1, now + 60_000_000)
    asm.flush_due()
    assert emitted() == 0  # a close in a minute: not yet
    clock.need(2, now - 1)
    asm.flush_due()
    assert emitted() == 20  # a close time has come: everything received goes out
    assert asm.pending_since_wall_us() >= now
    asm.on_frames(frames)
    asm.flush_due()
    assert emitted() == 0  # that close time was served once
    replay = ws._Assembler(Settings(max_batch_delay="1h", replay_from="2024-03-02T00:00:00Z",
                                    replay_to="2024-03-03T00:00:00Z"),
                           ["binance"], "test", SourceStats(), None)
    replay.on_frames(frames)
    replay.flush_due()
    assert not replay.take_output()  # a replay does not follow the wall clock
