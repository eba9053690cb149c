"""/health and /metrics under the real main flow (candles + features -> in-memory serve sink),
fed by a live-like source that reports to the source registry as a live source does."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import run_main
from prometheus_client.parser import text_string_to_metric_families

from connectors.monitoring import MonitoringServer, source_status
from connectors.tardis.files import TardisFileSource, poll
from dataflows.config import config_from_dict
from dataflows.main import build_flow
from dataflows.plan import plan_run
from operators import metrics
from operators.messages import TickBatch
from tests.connectors.monitoring.helpers import get, wait_for

SAMPLE = Path(__file__).resolve().parents[3] / "connectors" / "tardis" / "sample" / \
    "binance-futures_trades_2024-01-15_BTCUSDT.csv.gz"
SOURCE = "tardis-machine:test"


def sample_batches(pieces: int) -> list[TickBatch]:
    """The bundled BTCUSDT trades, read by the real file source, cut into `pieces`."""
    src = TardisFileSource([str(SAMPLE)], routes=["trades"])
    part = src.build_part("read", src.list_parts()[0], None)
    batches = [b for items in poll(part) for b in items if isinstance(b, TickBatch)]
    assert batches, "the bundled sample produced no trades"
    whole = pa.Table.from_batches([b.batch for b in batches]).combine_chunks().to_batches()[0]
    size = -(-whole.num_rows // pieces)
    return [TickBatch(batches[0].exchange, batches[0].symbol, batches[0].data_type,
                      whole.slice(i, size), batches[0].source)
            for i in range(0, whole.num_rows, size)]


class _LivePartition(StatefulSourcePartition[Any, None]):
    """Emits what the test puts on `feed`; None ends the stream. Reports like a live source."""

    def __init__(self, feed: queue.Queue[TickBatch | None]) -> None:
        self.feed = feed
        self.status = source_status(SOURCE, live=True)
        self.status.connected()
        self.ended = False

    def next_batch(self) -> list[Any]:
        if self.ended:
            raise StopIteration
        out: list[Any] = []
        while True:
            try:
                item = self.feed.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.ended = True
                self.status.done()
                break
            metrics.ROWS_IN.inc(len(item), data_type=item.data_type)
            out.append(item)
        if out:
            self.status.message()
        return out

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + timedelta(milliseconds=10)

    def snapshot(self) -> None:
        return None


class LiveSource(FixedPartitionedSource[Any, None]):
    def __init__(self) -> None:
        self.feed: queue.Queue[TickBatch | None] = queue.Queue()

    def list_parts(self) -> list[str]:
        return ["live"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _LivePartition:
        return _LivePartition(self.feed)


def test_health_and_metrics_under_a_running_flow_and_a_stalled_source(
        tmp_path: Path, serve: Callable[..., MonitoringServer]) -> None:
    bound = 0.4
    server = serve(stale_after_s=bound, window_s=1.0, sample_interval_s=0.05)
    cfg = config_from_dict({
        "candles": {"timeframes": ["15s", "1m"]},
        "serve": {"transport": "memory", "key_prefix": f"test-{uuid.uuid4().hex[:8]}"},
        "outputs": {"dead_letter_path": str(tmp_path / "dead")},
    })
    plan = plan_run(cfg, mode="streaming-candles-serve", inputs=[str(SAMPLE)])
    source = LiveSource()
    flow = build_flow(cfg, plan, flow_id="monitoring_test", source=source)
    batches = sample_batches(4)
    metrics.reset_all()                  # reading the sample counted its rows
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_main(flow)
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        for b in batches[:2]:
            source.feed.put(b)
        fed = sum(len(b) for b in batches[:2])

        def health() -> dict[str, Any]:
            return get(server.url + "/health").json()

        body = wait_for(lambda: (h := health())["candles_out"] and
                        h["data_types"].get("trades", {}).get("ticks_in") == fed and h)
        assert body["status"] == "ok", body["checks"]
        assert body["sources"][SOURCE]["state"] == "connected"
        assert set(body["candles_out"]) <= {"15s", "1m"} and body["candles_out"]["15s"] > 0
        assert body["data_types"]["trades"] == {"ticks_in": fed, "rejected": 0}
        sink = "serve:monitoring_test.serve_candles"     # serve:<step_id>
        serve_sink = wait_for(lambda: (x := health()["sinks"].get(sink)) and x["rows"] and x)
        assert serve_sink["errors"] == 0 and serve_sink["buffered"] == 0

        text = get(server.url + "/metrics").body.decode()
        names = {s.name: s for fam in text_string_to_metric_families(text) for s in fam.samples}
        assert names["ticks_in_total"].value == fed
        assert names["candles_out_total"].labels["timeframe"] in ("15s", "1m")
        assert "bytewax_serve_written_rows_total" in names
        assert names["source_connected"].labels == {"source": SOURCE}

        # the source stalls while the flow keeps running: degraded within the bound
        body = wait_for(lambda: (h := health())["status"] == "degraded" and h,
                        timeout=bound + 2)
        assert body["sources"][SOURCE]["state"] == "idle"
        assert body["sources"][SOURCE]["silent_s"] >= bound
        assert runner.is_alive()

        for b in batches[2:]:
            source.feed.put(b)
        wait_for(lambda: health()["data_types"]["trades"]["ticks_in"] ==
                 sum(len(b) for b in batches))
        source.feed.put(None)
        runner.join(timeout=20)
        assert not runner.is_alive() and not errors, errors
        body = health()
        assert body["sources"][SOURCE]["state"] == "done"
        assert body["status"] == "ok", body["checks"]
        assert sum(body["candles_out"].values()) == metrics.CANDLES_OUT.value()
        assert body["sinks"][sink]["rows"] == metrics.CANDLES_OUT.value()
    finally:
        source.feed.put(None)
        runner.join(timeout=20)
