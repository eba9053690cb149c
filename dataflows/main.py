"""The main job: streaming.yaml's mode -> one Bytewax flow.

    python -m bytewax.run dataflows.main                 # ./streaming.yaml or STREAMING_CONFIG
    python -m bytewax.run "dataflows.main:get_flow('path/to/streaming.yaml')"

Flow shape (candle modes):
    Tardis source -> router -> trades (+ gaps) -> key (exchange:symbol) -> candles
        -> features -> persist (Parquet | BigQuery) / serve (Redis | memory) / JSON lines
    dead letters (rejected rows, late trades) -> JSON lines in outputs.dead_letter_path
Tick mode: Tardis source -> router -> one tick table per data type -> persist.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, TypeGuard, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from connectors.sinks.durable import DrainAtSnapshot
from connectors.sinks.jsonl import JsonLinesSink
from connectors.sinks.parquet import ParquetWriter, new_run_id
from connectors.sinks.persist import BatchPolicy, PersistSink, RejectedRowsFile, log_rejected
from connectors.tables import TICK_TABLE_OF_ROUTE, TICK_TABLES, TableDef, candle_table, conform
from connectors.tardis.naming import InputError
from dataflows.config import ConfigError, StreamingConfig, load_config
from dataflows.plan import RunPlan, plan_run, with_recovery
from operators.candles.builder import ClosePolicy
from operators.candles.step import candle_builder
from operators.derived import (
    derived_table_rows,
    funding_builder,
    gap_builder,
    liquidation_builder,
)
from operators.features_step import feature_builder
from operators.messages import CandleBatch, DeadLetters, TableRows, TickBatch
from operators.router import route

log = logging.getLogger(__name__)


def make_source(cfg: StreamingConfig, plan: RunPlan, routes: list[str]) -> Any:
    """The Tardis source of this run: file replay or the tardis-machine WebSocket."""
    if plan.source_kind == "files":
        from connectors.tardis.files import TardisFileSource

        files = cfg.source.files
        return TardisFileSource(plan.inputs, from_date=files.from_date, to_date=files.to_date,
                                routes=routes, chunk_bytes=files.chunk_bytes)
    from connectors.tardis.websocket import TardisMachineSource

    return TardisMachineSource.from_config(cfg.source.tardis_machine, url=plan.tardis_machine_url,
                                           routes=routes)


def _persist_sink(cfg: StreamingConfig, plan: RunPlan, tables: dict[str, TableDef],
                  policies: dict[str, BatchPolicy]) -> Any:
    on_reject = (RejectedRowsFile(plan.dead_letter_dir) if plan.dead_letter_dir is not None
                 else log_rejected)
    if plan.persist_backend == "parquet":
        root, run_id = plan.parquet_dir, plan.stable_run_id or new_run_id()
        fresh = plan.stable_run_id is not None
        per_file = cfg.persist.parquet.rows_per_file
        policies = {k: BatchPolicy(per_file, p.max_age_s) for k, p in policies.items()}
        return PersistSink(
            tables, lambda: ParquetWriter(root, run_id=run_id, truncate_when_fresh=fresh,
                                          wait_at_checkpoint=fresh),
            policies, on_reject=on_reject)
    if plan.persist_backend == "bigquery":
        from connectors.bigquery.writer import BigQueryWriter

        bq = cfg.persist.bigquery
        live = bq.is_live(plan.live_source)
        return PersistSink(tables, lambda: BigQueryWriter(bq, live=live), policies,
                           on_reject=on_reject)
    raise ConfigError(f"unknown persist backend {plan.persist_backend!r}")


def _policy(cfg: StreamingConfig, data_type: str) -> BatchPolicy:
    dt = cfg.data_types[data_type]
    return BatchPolicy(max_rows=dt.batch_size, max_age_s=dt.batch_timeout / 1e6)


def _candle_outputs(cfg: StreamingConfig, plan: RunPlan, candles: Stream[CandleBatch]) -> None:
    if "persist" in plan.outputs:
        if plan.persist_backend == "jsonl":
            op.output("candles_jsonl", candles, JsonLinesSink(plan.jsonl_target or "-"))
        else:
            periods = cfg.features.periods
            tables = {t.name: t for t in (candle_table(tf, periods) for tf in
                                          cfg.candles.timeframes)}
            policy = _policy(cfg, "trades")

            def to_rows(c: CandleBatch) -> tuple[str, TableRows]:
                name = f"candles_{c.timeframe}"
                return name, TableRows(name, conform(c.batch, tables[name]))

            rows = op.map("candle_rows", candles, to_rows)
            op.output("persist_candles", rows,
                      _persist_sink(cfg, plan, tables, dict.fromkeys(tables, policy)))
    if "serve" in plan.outputs:
        from connectors.serve.sinks import serve_sink

        sink = serve_sink(cfg.serve, plan.serve_transport, plan.redis_url)
        if plan.serve_transport == "redis":  # drained at every snapshot: exactly once
            keyed = op.map("serve_key", candles, lambda c: (c.key, c))
            op.output("serve_candles", keyed, DrainAtSnapshot(sink))
        else:
            op.output("serve_candles", candles, sink)
    if plan.stdout and plan.jsonl_target != "-":
        op.output("candles_stdout", candles, JsonLinesSink("-"))


def _tick_rows(item: TickBatch) -> tuple[str, TableRows]:
    from connectors.tardis.datatypes import route_of

    name = TICK_TABLE_OF_ROUTE[route_of(item.data_type)]
    extra: dict[str, object] = {}
    if name == "ticks_book_snapshots":
        extra["depth"] = int(item.data_type.rsplit("_", 1)[1])
    elif name == "ticks_liquidations":
        extra["derived"] = False
    return name, TableRows(name, conform(item.batch, TICK_TABLES[name], extra))


def _derived(cfg: StreamingConfig) -> dict[str, bool]:
    """Which derived data types this config switches on (see README "Derived data types")."""
    dts = cfg.data_types
    return {
        "liquidations": dts["liquidations"].enabled and dts["liquidations"].fallback == "derive",
        "funding_rates": dts["funding_rates"].enabled and dts["funding_rates"].source == "derived",
        "gaps": dts["gaps"].enabled and dts["gaps"].source == "derived",
    }


def _derived_streams(cfg: StreamingConfig, routes: Any, native: list[str]) -> list[Stream]:
    """Tick mode: the derived liquidations, funding_rates and gaps streams."""
    on = _derived(cfg)
    out: list[Stream] = []
    if on["liquidations"]:
        keyed = op.key_on("liquidations_key", routes.ticks["trades"], lambda t: t.key)
        out.append(op.key_rm("liquidations_out", op.stateful_batch(
            "derived_liquidations", keyed, liquidation_builder(cfg.derived.liquidations))))
    if on["funding_rates"]:
        keyed = op.key_on("funding_key", routes.ticks["derivative_ticker"], lambda t: t.key)
        out.append(op.key_rm("funding_out", op.stateful_batch(
            "derived_funding_rates", keyed, funding_builder())))
    if on["gaps"]:
        ins = op.merge("gap_inputs", routes.gaps, *(routes.ticks[r] for r in native))
        keyed = op.key_on("gaps_key", ins, lambda x: x.key)
        out.append(op.key_rm("gaps_out", op.stateful_batch(
            "derived_gaps", keyed, gap_builder(cfg.derived.gaps))))
    return out


def _is_dead_letters(x: CandleBatch | DeadLetters) -> TypeGuard[DeadLetters]:
    return isinstance(x, DeadLetters)


def build_flow(cfg: StreamingConfig, plan: RunPlan | None = None, *,
               flow_id: str = "market_data", source: Any = None) -> Dataflow:
    """The flow of `plan` (default: the config's own mode and outputs); `source` replaces
    the configured Tardis source (tests, benchmarks)."""
    plan = plan or plan_run(cfg)
    if plan.mode == "live-instruments-sync":
        from dataflows.instruments import build_flow as build_instruments

        return build_instruments(cfg)
    native = [n for n, d in cfg.data_types.items() if d.enabled and d.source == "native"]
    on = _derived(cfg)
    if plan.candles:
        if not cfg.data_types["trades"].enabled:
            raise ConfigError("data_types.trades.enabled: candle modes need trades")
        needed = ["trades"]
    else:
        needed = list(native)
        if on["liquidations"] and "trades" not in needed:
            needed.append("trades")
        if on["funding_rates"] and "derivative_ticker" not in needed:
            needed.append("derivative_ticker")
    flow = Dataflow(flow_id)
    items = op.input("tardis", flow, source if source is not None else
                     make_source(cfg, plan, needed))
    routes = route("route", items, needed)
    dead: list[Stream[DeadLetters]] = [routes.dead_letters]

    if plan.candles:
        policy = ClosePolicy(cfg.candles.allowed_lateness,
                             cfg.candles.empty_intervals == "fill")
        ins = op.merge("trades_and_gaps", routes.ticks["trades"], routes.gaps)
        keyed = op.key_on("key_by_instrument", ins, lambda x: x.key)
        if on["gaps"]:  # detected gaps reach the candle step before the trades after them
            keyed = op.stateful_batch("derived_gaps", keyed,
                                      gap_builder(cfg.derived.gaps, passthrough=True))
        built = op.key_rm("candles_out", op.stateful_batch(
            "candles", keyed, candle_builder(cfg.candles.timeframes_us(), policy,
                                             wall_clock=plan.wall_clock)))
        split = op.branch("late_or_candles", built, _is_dead_letters)
        dead.append(split.trues)
        closed = cast(Stream[CandleBatch], split.falses)  # the step emits nothing else
        keyed_candles = op.key_on("key_candles", closed, lambda c: c.key)
        candles = op.key_rm("features_out", op.stateful_batch(
            "features", keyed_candles, feature_builder(cfg.features.periods)))
        _candle_outputs(cfg, plan, candles)
    else:
        streams = [routes.ticks[r] for r in native]
        derived = [op.map(f"derived_rows_{i}", s, derived_table_rows)
                   for i, s in enumerate(_derived_streams(cfg, routes, native))]
        if plan.persist_backend == "jsonl":
            outs: list[Stream[Any]] = [*streams, *(
                op.map(f"derived_jsonl_{i}", d, lambda kv: kv[1]) for i, d in enumerate(derived))]
            ticks = op.merge("all_ticks", *outs) if len(outs) > 1 else outs[0]
            op.output("ticks_jsonl", ticks, JsonLinesSink(plan.jsonl_target or "-"))
        else:
            tick_rows = [op.map(f"tick_rows_{r}", routes.ticks[r], _tick_rows) for r in native]
            rows = op.merge("all_rows", *tick_rows, *derived)
            routes_out = native + [r for r, v in on.items() if v]
            tables = {TICK_TABLE_OF_ROUTE[r]: TICK_TABLES[TICK_TABLE_OF_ROUTE[r]]
                      for r in routes_out}
            policies = {TICK_TABLE_OF_ROUTE[r]: _policy(cfg, r) for r in routes_out}
            op.output("persist_ticks", rows, _persist_sink(cfg, plan, tables, policies))

    if plan.dead_letter_dir is not None:
        target = str(Path(plan.dead_letter_dir) / "dead_letters.jsonl")
        all_dead = op.merge("dead_letters", *dead) if len(dead) > 1 else dead[0]
        op.output("dead_letter_out", all_dead, JsonLinesSink(target, per_worker=True))
    return flow


def get_flow(config_path: str | None = None) -> Dataflow:
    """Factory for `python -m bytewax.run "dataflows.main:get_flow('streaming.yaml')"`;
    a bad configuration or input stops with its message instead of a traceback."""
    try:
        cfg = load_config(config_path)
        flow = build_flow(cfg)
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    start_health_endpoint(cfg, check_throughput=cfg.mode != "live-instruments-sync")
    from dataflows.runner import settle_heap

    settle_heap()  # bytewax.run runs the flow next (dataflows.runner.run does the same)
    return flow


def start_health_endpoint(cfg: StreamingConfig, *, check_throughput: bool = True) -> None:
    """Serve /health and /metrics for this process (monitoring: in streaming.yaml). A port
    that is taken or invalid is reported and the flow runs on without the endpoint."""
    from connectors.monitoring import start_monitoring

    try:
        server = start_monitoring(cfg, check_throughput=check_throughput)
    except (OSError, ValueError) as e:
        log.warning("health/metrics endpoint not started: %s", e)
        return
    if server is not None:
        log.info("health and metrics on %s", server.url)


def main(argv: list[str] | None = None) -> int:
    """`python -m dataflows.main [--config FILE] [-w N] [-i I -a ADDRS] [-r DIR -s S -b S]`:
    the main job with streaming.yaml's `recovery:` section applied (flags win)."""
    import argparse

    from dataflows.runner import add_run_arguments, options_from, run

    p = argparse.ArgumentParser(prog="python -m dataflows.main", description=main.__doc__)
    p.add_argument("--config", help="streaming.yaml (default: $STREAMING_CONFIG or "
                   "./streaming.yaml)")
    add_run_arguments(p)
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        opts = options_from(args, cfg)
        flow = build_flow(cfg, with_recovery(plan_run(cfg), opts.recovery_dir))
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start_health_endpoint(cfg, check_throughput=cfg.mode != "live-instruments-sync")
    run(flow, opts)
    return 0


def __getattr__(name: str) -> Any:
    # `python -m bytewax.run dataflows.main` looks up `flow`: build it on first access only,
    # so importing this module (tests, the replay command) never reads files.
    if name == "flow":
        return get_flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
