"""Tardis data types: normalized Arrow schemas and per-row validation rules.

Every tick batch in the flow has exactly the columns of its data type's schema, in that order,
whichever source produced it (CSV file replay or tardis-machine WebSocket). All `*timestamp`
columns and `expiration` are `timestamp[us, tz=UTC]`; `timestamp` is the exchange's time and
`local_timestamp` the time Tardis received the message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
F64 = pa.float64()
STR = pa.string()

_BASE = [("exchange", STR), ("symbol", STR), ("timestamp", TS), ("local_timestamp", TS)]
_TIMESTAMP_COLUMNS = frozenset({"timestamp", "local_timestamp", "funding_timestamp",
                                "expiration"})


@dataclass(frozen=True)
class DataTypeSpec:
    """What one Tardis data type looks like and which rows are valid.

    `csv_names` maps normalized column names to the Tardis CSV header names where they
    differ (book snapshot levels: `asks[0].price` -> `asks_0_price`).
    """

    name: str
    schema: pa.Schema
    required: tuple[str, ...]
    positive: tuple[str, ...] = ()
    non_negative: tuple[str, ...] = ()
    enums: Mapping[str, frozenset[str]] = field(default_factory=dict)
    csv_names: Mapping[str, str] = field(default_factory=dict)
    table_group: str = ""

    def csv_name(self, column: str) -> str:
        return self.csv_names.get(column, column)

    @property
    def timestamp_columns(self) -> tuple[str, ...]:
        return tuple(n for n in self.schema.names if n in _TIMESTAMP_COLUMNS)


def _schema(extra: list[tuple[str, pa.DataType]]) -> pa.Schema:
    return pa.schema(_BASE + extra)


SIDES = frozenset({"buy", "sell", "unknown"})

TRADES = DataTypeSpec(
    name="trades",
    schema=_schema([("id", STR), ("side", STR), ("price", F64), ("amount", F64)]),
    required=("exchange", "symbol", "timestamp", "local_timestamp", "side", "price", "amount"),
    positive=("price", "amount"),
    enums={"side": SIDES},
    table_group="trades",
)

LIQUIDATIONS = DataTypeSpec(
    name="liquidations",
    schema=TRADES.schema,
    required=TRADES.required,
    positive=("price", "amount"),
    enums={"side": SIDES},
    table_group="liquidations",
)

QUOTES = DataTypeSpec(
    name="quotes",
    schema=_schema([("ask_amount", F64), ("ask_price", F64), ("bid_price", F64),
                    ("bid_amount", F64)]),
    required=("exchange", "symbol", "timestamp", "local_timestamp"),
    non_negative=("ask_amount", "ask_price", "bid_price", "bid_amount"),
    table_group="quotes",
)

DERIVATIVE_TICKER = DataTypeSpec(
    name="derivative_ticker",
    schema=_schema([("funding_timestamp", TS), ("funding_rate", F64),
                    ("predicted_funding_rate", F64), ("open_interest", F64),
                    ("last_price", F64), ("index_price", F64), ("mark_price", F64)]),
    required=("exchange", "symbol", "timestamp", "local_timestamp"),
    non_negative=("open_interest", "last_price", "index_price", "mark_price"),
    table_group="derivative_ticker",
)

OPTIONS_CHAIN = DataTypeSpec(
    name="options_chain",
    schema=_schema([
        ("type", STR), ("strike_price", F64), ("expiration", TS), ("open_interest", F64),
        ("last_price", F64), ("bid_price", F64), ("bid_amount", F64), ("bid_iv", F64),
        ("ask_price", F64), ("ask_amount", F64), ("ask_iv", F64), ("mark_price", F64),
        ("mark_iv", F64), ("underlying_index", STR), ("underlying_price", F64),
        ("delta", F64), ("gamma", F64), ("vega", F64), ("theta", F64), ("rho", F64),
    ]),
    required=("exchange", "symbol", "timestamp", "local_timestamp", "type", "strike_price",
              "expiration"),
    positive=("strike_price",),
    non_negative=("open_interest", "last_price", "bid_price", "bid_amount", "ask_price",
                  "ask_amount", "mark_price", "underlying_price"),
    enums={"type": frozenset({"put", "call"})},
    table_group="options_chain",
)

INCREMENTAL_BOOK_L2 = DataTypeSpec(
    name="incremental_book_L2",
    schema=_schema([("is_snapshot", pa.bool_()), ("side", STR), ("price", F64),
                    ("amount", F64)]),
    required=("exchange", "symbol", "timestamp", "local_timestamp", "is_snapshot", "side",
              "price", "amount"),
    positive=("price",),
    non_negative=("amount",),
    enums={"side": frozenset({"bid", "ask"})},
    table_group="book_changes",
)


def book_snapshot_spec(depth: int) -> DataTypeSpec:
    """book_snapshot_{depth}: asks/bids price and amount per level, nullable when thinner."""
    if not 1 <= depth <= 1000:
        raise ValueError(f"book snapshot depth must be 1..1000, got {depth}")
    cols: list[tuple[str, pa.DataType]] = []
    names: dict[str, str] = {}
    for i in range(depth):
        for side in ("asks", "bids"):
            for what in ("price", "amount"):
                norm = f"{side}_{i}_{what}"
                cols.append((norm, F64))
                names[norm] = f"{side}[{i}].{what}"
    nonneg = tuple(n for n, _ in cols)
    return DataTypeSpec(
        name=f"book_snapshot_{depth}",
        schema=_schema(cols),
        required=("exchange", "symbol", "timestamp", "local_timestamp"),
        non_negative=nonneg,
        csv_names=names,
        table_group="book_snapshots",
    )


_FIXED = {s.name: s for s in (TRADES, LIQUIDATIONS, QUOTES, DERIVATIVE_TICKER, OPTIONS_CHAIN,
                              INCREMENTAL_BOOK_L2)}
_BOOK_RE = re.compile(r"^book_snapshot_(\d+)$")

#: Router keys (streaming.yaml `data_types:`) of the Tardis data type names.
ROUTE_OF = {
    "trades": "trades",
    "liquidations": "liquidations",
    "quotes": "quotes",
    "derivative_ticker": "derivative_ticker",
    "options_chain": "options_chain",
    "incremental_book_L2": "incremental_book_L2",
}


def get_spec(data_type: str) -> DataTypeSpec:
    """The spec of a Tardis data type name; raises KeyError naming the known types."""
    spec = _FIXED.get(data_type)
    if spec is not None:
        return spec
    m = _BOOK_RE.match(data_type)
    if m:
        return book_snapshot_spec(int(m.group(1)))
    raise KeyError(
        f"unknown Tardis data type {data_type!r}; known: {', '.join(sorted(_FIXED))}, "
        "book_snapshot_N"
    )


def route_of(data_type: str) -> str:
    """The router branch (a `data_types:` key) a Tardis data type belongs to."""
    if _BOOK_RE.match(data_type):
        return "book_snapshots"
    try:
        return ROUTE_OF[data_type]
    except KeyError:
        raise KeyError(f"unknown Tardis data type {data_type!r}") from None


def known_data_types() -> list[str]:
    return sorted(_FIXED) + ["book_snapshot_N"]
