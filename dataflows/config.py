"""streaming.yaml: the one configuration file, validated with pydantic.

`load_config(path)` returns a `StreamingConfig` or raises `ConfigError` whose message names
the offending key and the problem (never a pydantic traceback). The path comes from
`--config`, else the environment variable STREAMING_CONFIG, else ./streaming.yaml.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_CONFIG_PATH = "streaming.yaml"
CONFIG_ENV = "STREAMING_CONFIG"

MODES = (
    "streaming-ticks-bigquery",
    "streaming-candles-serve",
    "streaming-candles-bigquery",
    "live-instruments-sync",
)
Mode = Literal[
    "streaming-ticks-bigquery",
    "streaming-candles-serve",
    "streaming-candles-bigquery",
    "live-instruments-sync",
]
Output = Literal["serve", "persist"]

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)\s*$")
_UNIT_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000,
            "d": 86_400_000_000}


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the key and the problem."""


def parse_duration_us(value: Any) -> int:
    """Parse '15s', '1m', '500ms', '4h', '1d' or a number of seconds into microseconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '15s' or '1m', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return int(round(value * 1_000_000))
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return int(round(float(m.group(1)) * _UNIT_US[m.group(2)]))
    raise ValueError(
        f"expected a duration such as '500ms', '15s', '1m', '4h' or '1d', got {value!r}"
    )


def format_timeframe(us: int) -> str:
    """The label of a timeframe in microseconds: 15s, 1m, 5m, 1h, 4h, 1d."""
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000),
                       ("s", 1_000_000)):
        if us % size == 0:
            return f"{us // size}{unit}"
    raise ValueError(f"timeframe of {us} us is not a whole number of seconds")


DurationUs = Annotated[int, BeforeValidator(parse_duration_us)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FilesSource(_Strict):
    """Replay of Tardis downloadable CSV datasets."""

    paths: list[str] = Field(default_factory=list, description="globs of .csv/.csv.gz files")
    from_date: date | None = None
    to_date: date | None = None
    chunk_bytes: int = Field(default=2 << 20, ge=64 << 10, le=1 << 30)

    @model_validator(mode="after")
    def _dates_ordered(self) -> FilesSource:
        if self.from_date and self.to_date and self.from_date > self.to_date:
            raise ValueError("from_date is after to_date")
        return self


class TardisMachineSource(_Strict):
    """A tardis-machine server's normalized WebSocket API: live, or a replay when
    `replay_from`/`replay_to` are set. The environment variable TARDIS_MACHINE_URL overrides
    `url`. See README "Live source (tardis-machine)" for every key."""

    url: str = Field(default="ws://localhost:8001",
                     description="tardis-machine's WebSocket API (its --port + 1)")
    replay_from: str | None = Field(default=None, description="ISO 8601, inclusive")
    replay_to: str | None = Field(default=None, description="ISO 8601, exclusive")
    exchanges: dict[str, list[str]] = Field(
        default_factory=dict, description="exchange -> symbols ([] = all the server streams)")
    data_types: list[str] = Field(default_factory=lambda: ["trade"])
    with_disconnect_messages: bool = True
    max_batch_rows: int = Field(default=10_000, ge=1, le=10_000_000)
    max_batch_delay: DurationUs = 10_000
    stale_timeout: DurationUs = Field(
        default=30_000_000, description="reconnect when no message at all for this long; 0 = off")
    ping_interval: DurationUs = 10_000_000
    ping_timeout: DurationUs = 10_000_000
    open_timeout: DurationUs = 10_000_000
    reconnect_initial_delay: DurationUs = 250_000
    reconnect_max_delay: DurationUs = 30_000_000
    max_queue_frames: int = Field(default=200_000, ge=100)
    connection_per_exchange: bool = False
    stop_on_normal_close: bool = False
    decoder: Literal["thread", "process"] = Field(
        default="thread", description="where frames are decoded into Arrow batches: in the "
        "flow's process, or in a child process per connection (off the flow's GIL)")

    @field_validator("url")
    @classmethod
    def _ws_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"expected a ws:// or wss:// URL with a host, got {v!r}")
        if parts.query or parts.fragment:
            raise ValueError("the URL must not carry a query; options are built from the config")
        return v.rstrip("/")

    @field_validator("replay_from", "replay_to")
    @classmethod
    def _iso(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from datetime import datetime

        try:
            datetime.fromisoformat(v)
        except ValueError:
            raise ValueError(
                f"expected an ISO 8601 date or time such as '2021-07-22T22:36:00Z', got {v!r}"
            ) from None
        return v

    @field_validator("exchanges")
    @classmethod
    def _exchanges(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for exchange, symbols in v.items():
            if not exchange.strip():
                raise ValueError("an exchange name is empty")
            if any(not s.strip() for s in symbols):
                raise ValueError(f"{exchange}: a symbol is empty")
            if len(set(symbols)) != len(symbols):
                raise ValueError(f"{exchange}: a symbol is listed twice")
        return v

    @field_validator("data_types")
    @classmethod
    def _data_types(cls, v: list[str]) -> list[str]:
        from connectors.tardis.normalized import machine_data_type

        if not v:
            raise ValueError("at least one data type is needed")
        seen: dict[str, str] = {}
        for dt in v:
            tardis = machine_data_type(dt)
            if tardis in seen:
                raise ValueError(f"{seen[tardis]!r} and {dt!r} both produce {tardis}; keep one")
            seen[tardis] = dt
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TardisMachineSource:
        if (self.replay_from is None) != (self.replay_to is None):
            raise ValueError("replay_from and replay_to go together (both set = replay)")
        if self.replay_from is not None and self.replay_to is not None:
            from datetime import UTC, datetime

            def utc(text: str) -> datetime:
                d = datetime.fromisoformat(text)
                return d if d.tzinfo else d.replace(tzinfo=UTC)

            if utc(self.replay_from) >= utc(self.replay_to):
                raise ValueError("replay_from must be before replay_to")
        if self.reconnect_initial_delay <= 0:
            raise ValueError("reconnect_initial_delay must be > 0")
        if self.reconnect_max_delay < self.reconnect_initial_delay:
            raise ValueError("reconnect_max_delay must be >= reconnect_initial_delay")
        if self.ping_interval and not self.ping_timeout:
            raise ValueError("ping_timeout must be > 0 when ping_interval is set")
        if self.open_timeout <= 0:
            raise ValueError("open_timeout must be > 0")
        return self


class SourceConfig(_Strict):
    kind: Literal["files", "tardis-machine"] = "files"
    files: FilesSource = FilesSource(paths=["connectors/tardis/sample/*.csv.gz"])
    tardis_machine: TardisMachineSource = TardisMachineSource()


class DataTypeConfig(_Strict):
    """Routing and batching of one data type (the `data_types:` section)."""

    enabled: bool = True
    source: Literal["native", "derived"] = "native"
    batch_size: int = Field(default=10_000, ge=1, description="rows per sink write")
    batch_timeout: DurationUs = 5_000_000
    fallback: Literal["none", "derive"] = "none"


def _default_data_types() -> dict[str, DataTypeConfig]:
    return {
        "trades": DataTypeConfig(),
        "book_snapshots": DataTypeConfig(),
        "quotes": DataTypeConfig(),
        "derivative_ticker": DataTypeConfig(),
        "liquidations": DataTypeConfig(fallback="derive"),
        "options_chain": DataTypeConfig(),
        "incremental_book_L2": DataTypeConfig(enabled=False),
        "funding_rates": DataTypeConfig(source="derived"),
        "gaps": DataTypeConfig(source="derived"),
    }


DATA_TYPE_KEYS = tuple(_default_data_types())


class CandleConfig(_Strict):
    """Multi-timeframe candles; see README 'Candle semantics'."""

    timeframes: list[str] = Field(default_factory=lambda: ["15s", "1m", "5m", "15m", "1h",
                                                           "4h", "1d"])
    allowed_lateness: DurationUs = 0
    empty_intervals: Literal["fill", "skip"] = "fill"
    wall_clock_close: bool | Literal["auto"] = "auto"

    @field_validator("timeframes")
    @classmethod
    def _valid_timeframes(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one timeframe is needed")
        seen: set[int] = set()
        for tf in v:
            us = parse_duration_us(tf)
            if us < 1_000_000 or us % 1_000_000:
                raise ValueError(f"timeframe {tf!r} must be a whole number of seconds >= 1s")
            if us in seen:
                raise ValueError(f"timeframe {tf!r} is listed twice")
            seen.add(us)
        return v

    def timeframes_us(self) -> list[int]:
        return [parse_duration_us(tf) for tf in self.timeframes]


class FeatureConfig(_Strict):
    periods: list[int] = Field(default_factory=lambda: [5, 10, 20])

    @field_validator("periods")
    @classmethod
    def _valid_periods(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("at least one period is needed")
        if any(p < 2 or p > 1000 for p in v):
            raise ValueError("periods must be between 2 and 1000")
        if len(set(v)) != len(v):
            raise ValueError("periods must be distinct")
        return sorted(v)


class ParquetConfig(_Strict):
    path: str = "./output"
    rows_per_file: int = Field(default=250_000, ge=1)


class BigQueryConfig(_Strict):
    """The BigQuery persist backend (`persist.bigquery:`); see connectors.bigquery.

    Credentials are never configured here: they come from the environment (application
    default credentials or GOOGLE_APPLICATION_CREDENTIALS). GOOGLE_CLOUD_PROJECT overrides
    `project`. `live` picks the dataset: the live one (HOUR partitions, partition expiration)
    or the historical one (DAY partitions, kept); "auto" means live for a tardis-machine
    source without replay dates, historical for file replays and backfills.
    """

    project: str | None = None
    dataset: str = "market_data_streaming"
    live_dataset: str = "market_data_streaming_live"
    live: bool | Literal["auto"] = "auto"
    location: str = "US"
    live_partition_expiration_days: int = Field(default=30, ge=1, le=36_500)
    write_api: Literal["storage", "insert_all"] = "storage"
    dedup_views: bool = True
    max_retries: int = Field(default=8, ge=0, le=100)
    retry_initial_backoff: DurationUs = 250_000
    retry_max_backoff: DurationUs = 30_000_000
    request_timeout: DurationUs = 60_000_000
    max_request_bytes: int = Field(default=9_000_000, ge=64 << 10, le=10_000_000,
                                   description="bytes per AppendRows request (API cap 10 MB)")
    insert_all_max_rows: int = Field(default=500, ge=1, le=50_000,
                                     description="rows per insert_all request")

    @field_validator("dataset", "live_dataset")
    @classmethod
    def _valid_dataset(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_]{1,1024}", v):
            raise ValueError(f"dataset {v!r} must be letters, digits and underscores")
        return v

    @field_validator("project")
    @classmethod
    def _valid_project(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]", v):
            raise ValueError(f"project {v!r} is not a Google Cloud project id")
        return v

    @model_validator(mode="after")
    def _backoff_ordered(self) -> BigQueryConfig:
        if self.retry_initial_backoff <= 0:
            raise ValueError("retry_initial_backoff must be positive")
        if self.retry_max_backoff < self.retry_initial_backoff:
            raise ValueError("retry_max_backoff is shorter than retry_initial_backoff")
        if self.request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        if self.dataset == self.live_dataset:
            raise ValueError("dataset and live_dataset must differ (their partitioning differs)")
        return self

    def is_live(self, source_is_live: bool) -> bool:
        """Whether rows go to the live dataset, `live: auto` resolved by the source."""
        return source_is_live if self.live == "auto" else bool(self.live)

    def dataset_for(self, live: bool) -> str:
        return self.live_dataset if live else self.dataset


class PersistConfig(_Strict):
    backend: Literal["parquet", "bigquery"] = "parquet"
    parquet: ParquetConfig = ParquetConfig()
    bigquery: BigQueryConfig = BigQueryConfig()


class ServeConfig(_Strict):
    transport: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    stream_maxlen: int = Field(default=10_000, ge=1)
    key_prefix: str = "candles"
    buffer_max_rows: int = Field(default=100_000, ge=1)


class OutputsConfig(_Strict):
    stdout: bool = False
    dead_letter_path: str | None = "./output/dead_letter"
    progress_interval: DurationUs = 5_000_000


class InstrumentsConfig(_Strict):
    """The CCXT sidecar flow (`live-instruments-sync`, dataflows/instruments.py).

    `exchanges` are Tardis exchange ids (binance, binance-futures, binance-delivery, bybit,
    bybit-spot, bybit-options, okex, okex-swap, okex-futures, okex-options, deribit, coinbase,
    cryptofacilities); each is loaded through its ccxt client every `refresh_interval`.
    Definitions older than `ttl` are served marked stale. `registry: redis` publishes them
    and the change events to Redis (REDIS_URL overrides `redis_url`). `ccxt_options` adds ccxt
    constructor settings per ccxt id (no credentials: market metadata is public).
    """

    exchanges: list[str] = Field(default_factory=lambda: ["binance", "binance-futures"])
    market_types: list[Literal["spot", "perpetual", "future", "option"]] = [
        "spot", "perpetual", "future", "option"]
    refresh_interval: DurationUs = 3_600_000_000
    ttl: DurationUs = 7_200_000_000
    registry: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "instruments"
    events_maxlen: int = Field(default=10_000, ge=1, le=10_000_000)
    max_retries: int = Field(default=3, ge=0, le=20)
    retry_initial_delay: DurationUs = 1_000_000
    retry_max_delay: DurationUs = 60_000_000
    request_timeout: DurationUs = 30_000_000
    max_delisted_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    max_refreshes: int | None = Field(default=None, ge=1,
                                      description="stop after this many syncs (None: run on)")
    ccxt_options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("exchanges")
    @classmethod
    def _known_exchanges(cls, v: list[str]) -> list[str]:
        from connectors.instruments.venues import TARDIS_VENUES, unknown_exchange_message

        if not v:
            raise ValueError("at least one exchange is needed")
        for name in v:
            if name not in TARDIS_VENUES:
                raise ValueError(unknown_exchange_message(name))
        if len(set(v)) != len(v):
            raise ValueError("an exchange is listed twice")
        return v

    @field_validator("market_types")
    @classmethod
    def _some_market_types(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one market type is needed")
        return list(dict.fromkeys(v))

    @field_validator("key_prefix")
    @classmethod
    def _valid_prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "{} \t\n"):
            raise ValueError(f"key_prefix {v!r} must be non-empty without braces or spaces")
        return v

    @field_validator("ccxt_options")
    @classmethod
    def _valid_ccxt_options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from connectors.instruments.venues import CCXT_EXCHANGES

        secret = {"apikey", "secret", "password", "uid", "privatekey", "token"}
        for ccxt_id, settings in v.items():
            if ccxt_id not in CCXT_EXCHANGES:
                raise ValueError(f"unknown ccxt exchange {ccxt_id!r}; supported: "
                                 f"{', '.join(CCXT_EXCHANGES)}")
            found = sorted(k for k in settings if k.lower() in secret)
            if found:
                raise ValueError(f"{ccxt_id}: {', '.join(found)} must not be configured here; "
                                 "instrument metadata needs no credentials")
        return v

    @model_validator(mode="after")
    def _intervals(self) -> InstrumentsConfig:
        if self.refresh_interval < 1_000_000:
            raise ValueError("refresh_interval must be at least 1s")
        if self.ttl < self.refresh_interval:
            raise ValueError("ttl is shorter than refresh_interval (every definition would go "
                             "stale between refreshes)")
        if self.retry_initial_delay <= 0 or self.retry_max_delay < self.retry_initial_delay:
            raise ValueError("retry delays must be positive and retry_max_delay >= "
                             "retry_initial_delay")
        if self.request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        return self


class MonitoringConfig(_Strict):
    """The /health and /metrics endpoint and its alert thresholds (`monitoring:`).

    Every flow serves both on `host:port` (the environment variable HEALTH_PORT overrides
    `port`; 0 picks a free port). Rates and latency quantiles are computed over the last
    `window` from counters sampled every `sample_interval`; the same thresholds ship as
    Prometheus alert rules (k8s/monitoring). See README "Health and metrics".
    """

    enabled: bool = True
    host: str = Field(default="127.0.0.1", description="bind address; 0.0.0.0 in a pod")
    port: int = Field(default=8080, ge=0, le=65535, description="0 = any free port")
    window: DurationUs = Field(default=60_000_000, description="rates and quantiles over this")
    sample_interval: DurationUs = 1_000_000
    max_error_rate: float = Field(default=0.05, ge=0.0, le=1.0,
                                  description="rejected/read rows, or failed/written sink rows")
    max_processing_latency: DurationUs = Field(
        default=1_000_000, description="bound on the latency_quantile of per-batch step time")
    latency_quantile: float = Field(default=0.95, gt=0.0, lt=1.0)
    min_throughput: float = Field(default=10.0, ge=0.0,
                                  description="ticks/s while a tick source runs; 0 = off")
    max_event_lag: DurationUs | None = Field(
        default=None, description="bound on the quantile of exchange-time-to-emit; null = off")
    stale_after: DurationUs = Field(
        default=30_000_000, description="a live source silent this long is stale (degraded)")
    failing_after: DurationUs = Field(
        default=120_000_000,
        description="every live source down or stale this long: failing (HTTP 503)")

    @field_validator("host")
    @classmethod
    def _valid_host(cls, v: str) -> str:
        if not v.strip() or any(c in v for c in "/ \t\n") or "://" in v:
            raise ValueError(f"expected a host name or IP address such as 127.0.0.1, got {v!r}")
        return v.strip()

    @model_validator(mode="after")
    def _valid_windows(self) -> MonitoringConfig:
        if self.window < 100_000:
            raise ValueError("window must be at least 100ms")
        if self.sample_interval <= 0 or self.sample_interval * 2 > self.window:
            raise ValueError("sample_interval must be > 0 and at most half the window")
        if self.max_processing_latency <= 0:
            raise ValueError("max_processing_latency must be > 0")
        if self.max_event_lag is not None and self.max_event_lag <= 0:
            raise ValueError("max_event_lag must be > 0 (or null to switch the check off)")
        if self.stale_after <= 0 or self.failing_after <= 0:
            raise ValueError("stale_after and failing_after must be > 0")
        return self


#: Exchanges with a native liquidation feed in Tardis (tardis-dev `normalizeLiquidations`).
NATIVE_LIQUIDATION_EXCHANGES = (
    "binance-futures", "binance-delivery", "bitfinex-derivatives", "bitmex", "bybit",
    "cryptofacilities", "deribit", "dydx-v4", "ftx", "huobi-dm", "huobi-dm-swap",
    "huobi-dm-linear-swap", "okex-futures", "okex-swap",
)
#: Exchanges whose Tardis trade ids are contiguous integers per symbol (Binance's trade id).
CONTIGUOUS_TRADE_ID_EXCHANGES = ("binance", "binance-us", "binance-futures", "binance-delivery")
_DEFAULT_MAX_SILENCE = {"trades": "10m", "quotes": "10m", "book_snapshots": "10m",
                        "derivative_ticker": "2m"}


def _exchange_list(v: list[str]) -> list[str]:
    if any(not e.strip() for e in v):
        raise ValueError("an exchange name is empty")
    if len(set(v)) != len(v):
        raise ValueError("an exchange is listed twice")
    return v


class DerivedConfig(_Strict):
    """Rules and thresholds of the derived data types (README "Derived data types").

    Whether a type is derived at all is switched in `data_types:` (liquidations
    `fallback: derive`; funding_rates and gaps `source: derived`); these keys say how.
    """

    class Liquidations(_Strict):
        """A taker order (fills of one timestamp and side) is a derived liquidation when its
        amount > `multiplier` x the EWMA (half-life `halflife` orders) of earlier order
        amounts and its notional (price x amount) >= `min_notional`, after `warmup` orders.
        A heuristic for exchanges outside `native_exchanges`."""

        native_exchanges: list[str] = Field(
            default_factory=lambda: list(NATIVE_LIQUIDATION_EXCHANGES))
        group_fills: bool = True
        multiplier: float = Field(default=20.0, gt=1.0, le=1e6)
        halflife: int = Field(default=1_000, ge=1, le=100_000_000)
        warmup: int = Field(default=200, ge=1, le=100_000_000)
        min_notional: float = Field(default=10_000.0, ge=0.0)

        _exchanges = field_validator("native_exchanges")(_exchange_list)

        def derives_for(self, exchange: str) -> bool:
            return exchange not in self.native_exchanges

    class Gaps(_Strict):
        """Trade-id gaps on `trade_id_exchanges` (at least `min_missing_ids` ids missing) and
        exchange-time silences longer than `max_silence[data type]` (0 = off)."""

        trade_id_exchanges: list[str] = Field(
            default_factory=lambda: list(CONTIGUOUS_TRADE_ID_EXCHANGES))
        min_missing_ids: int = Field(default=1, ge=1)
        max_silence: dict[str, DurationUs] = Field(
            default_factory=lambda: dict(_DEFAULT_MAX_SILENCE), validate_default=True)

        _exchanges = field_validator("trade_id_exchanges")(_exchange_list)

        @field_validator("max_silence", mode="before")
        @classmethod
        def _merge_silence(cls, v: Any) -> Any:
            if not isinstance(v, dict):
                raise ValueError("expected a mapping of data type to a duration")
            known = [k for k in DATA_TYPE_KEYS if k not in ("funding_rates", "gaps")]
            unknown = sorted(set(v) - set(known))
            if unknown:
                raise ValueError(f"unknown data type {unknown[0]!r}; known: {', '.join(known)}")
            return {**_DEFAULT_MAX_SILENCE, **v}

    liquidations: Liquidations = Liquidations()
    gaps: Gaps = Gaps()


class RecoveryConfig(_Strict):
    """Bytewax's recovery store (`recovery:`), used by `python -m dataflows.main` and the replay
    command; `python -m bytewax.run` takes the usual -r/-s/-b flags instead."""

    directory: str | None = Field(default=None, description="recovery store; null = off")
    snapshot_interval: DurationUs = 10_000_000
    backup_interval: DurationUs = 0
    partitions: int = Field(default=1, ge=1, le=1024,
                            description="store partitions created when the directory is new")

    @field_validator("snapshot_interval")
    @classmethod
    def _positive_interval(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("snapshot_interval must be > 0")
        return v


class StreamingConfig(_Strict):
    """Root of streaming.yaml."""

    mode: Mode = "streaming-candles-bigquery"
    modes: list[Output] | None = None
    source: SourceConfig = SourceConfig()
    data_types: dict[str, DataTypeConfig] = Field(default_factory=_default_data_types)
    candles: CandleConfig = CandleConfig()
    features: FeatureConfig = FeatureConfig()
    persist: PersistConfig = PersistConfig()
    serve: ServeConfig = ServeConfig()
    outputs: OutputsConfig = OutputsConfig()
    instruments: InstrumentsConfig = InstrumentsConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    derived: DerivedConfig = DerivedConfig()
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @field_validator("data_types", mode="before")
    @classmethod
    def _merge_data_types(cls, v: Any) -> Any:
        if v is None:
            return _default_data_types()
        if not isinstance(v, dict):
            raise ValueError("expected a mapping of data type name to settings")
        unknown = sorted(set(v) - set(DATA_TYPE_KEYS))
        if unknown:
            raise ValueError(
                f"unknown data type {unknown[0]!r}; known: {', '.join(DATA_TYPE_KEYS)}"
            )
        merged: dict[str, Any] = dict(_default_data_types())
        merged.update(v)
        return merged

    @property
    def base_dir(self) -> Path:
        """The directory relative paths in the file are resolved against (the file's own)."""
        return self._base_dir

    def resolve_path(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self._base_dir / p

    def outputs_for_mode(self) -> list[str]:
        """The outputs the flow writes: `modes:` if set, else the mode's own output."""
        if self.modes:
            return list(dict.fromkeys(self.modes))
        return ["serve"] if self.mode == "streaming-candles-serve" else ["persist"]


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and section)"
        elif e["type"] == "literal_error":
            msg = f"{msg}, got {e.get('input')!r}"
        lines.append(f"  {_format_loc(tuple(e['loc']))}: {msg}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<dict>",
                     base_dir: Path | None = None) -> StreamingConfig:
    try:
        cfg = StreamingConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None
    if base_dir is not None:
        cfg._base_dir = base_dir
    return cfg


def resolve_config_path(cli_value: str | None = None) -> Path:
    return Path(cli_value or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike[str] | None = None) -> StreamingConfig:
    """Read and validate streaming.yaml; raises ConfigError with a readable message."""
    p = resolve_config_path(str(path) if path is not None else None)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"{p}: configuration file not found (pass --config or set {CONFIG_ENV})"
        ) from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read configuration file: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{p}: not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return config_from_dict(data, str(p), p.resolve().parent)
