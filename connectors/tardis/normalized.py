"""tardis-machine normalized JSON messages -> the Tardis CSV data types' Arrow batches.

tardis-machine (and tardis-dev) emit one JSON object per message with camelCase fields and ISO
8601 timestamps. The CSV file source produces the same ticks as integer-microsecond columns
with snake_case names (connectors.tardis.datatypes). This module maps the first onto the
second, so both sources give identical batches for the same ticks:

| message `type` (name)                 | Tardis data type        | rows per message          |
|---------------------------------------|-------------------------|---------------------------|
| trade                                 | trades                  | 1                         |
| liquidation                           | liquidations            | 1                         |
| book_change                           | incremental_book_L2     | one per level, asks first |
| book_snapshot (book_snapshot_{N}_{i}) | book_snapshot_{N}       | 1                         |
| book_snapshot (quote, quote_{i})      | quotes                  | 1                         |
| derivative_ticker                     | derivative_ticker       | 1                         |
| option_summary                        | options_chain           | 1                         |

Timestamps are parsed vectorised (Arrow's ISO 8601 cast at nanosecond precision, then truncated
to microseconds, the resolution of the CSV datasets); strings Arrow cannot cast fall back to a
per-value parser that accepts any number of fractional digits. A value of the wrong JSON type,
an unparseable timestamp or a row that breaks its data type's rules (DataTypeSpec: required,
positive, non-negative, enums) is reported per message, never silently dropped.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.tardis.datatypes import (
    DERIVATIVE_TICKER,
    INCREMENTAL_BOOK_L2,
    LIQUIDATIONS,
    OPTIONS_CHAIN,
    QUOTES,
    TRADES,
    TS,
    DataTypeSpec,
    book_snapshot_spec,
)

Message = dict[str, Any]

# --------------------------------------------------------------------------------------------
# tardis-machine `dataTypes` option values

_SNAPSHOT_RE = re.compile(r"^book_snapshot_(\d+)_(\d+)(ms|s|m)$")
_QUOTE_RE = re.compile(r"^quote(?:_(\d+)(ms|s|m))?$")
_SIMPLE_TYPES = {
    "trade": "trades",
    "book_change": "incremental_book_L2",
    "derivative_ticker": "derivative_ticker",
    "liquidation": "liquidations",
    "option_summary": "options_chain",
}


def machine_data_type(value: str) -> str:
    """The Tardis data type a tardis-machine `dataTypes` entry produces.

    Raises ValueError naming the accepted forms; `trade_bar_*` is refused on purpose because the
    flow computes its own candles from trades.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"data type must be a non-empty string, got {value!r}")
    if value in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[value]
    m = _SNAPSHOT_RE.match(value)
    if m:
        depth = int(m.group(1))
        if not 1 <= depth <= 1000:
            raise ValueError(f"data type {value!r}: book snapshot depth must be 1..1000")
        return f"book_snapshot_{depth}"
    if _QUOTE_RE.match(value):
        return "quotes"
    if value.startswith("trade_bar_"):
        raise ValueError(
            f"data type {value!r} is not ingested: the flow builds its own candles from 'trade'"
        )
    raise ValueError(
        f"unknown tardis-machine data type {value!r}; expected one of "
        f"{', '.join(sorted(_SIMPLE_TYPES))}, book_snapshot_{{depth}}_{{interval}}{{ms|s|m}} "
        "(e.g. book_snapshot_25_100ms), quote or quote_{interval}{ms|s|m}"
    )


def message_data_type(message_type: Any, name: Any) -> str | None:
    """The Tardis data type of a normalized message, or None when it carries no ticks."""
    simple = _SIMPLE_TYPES.get(message_type) if isinstance(message_type, str) else None
    if simple is not None:
        return simple
    if message_type == "book_snapshot" and isinstance(name, str):
        try:
            return machine_data_type(name)
        except ValueError:
            return None
    return None


# --------------------------------------------------------------------------------------------
# timestamps

_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(Z|z|[+-]\d{2}:?\d{2})?$"
)


def parse_iso_us(value: str) -> int:
    """An ISO 8601 UTC timestamp as integer microseconds since the epoch.

    Accepts any number of fractional digits (truncated to microseconds, as in the CSV datasets),
    'Z', a numeric offset, or no zone (read as UTC). Raises ValueError on anything else.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 timestamp string, got {_short(value)}")
    m = _ISO_RE.match(value)
    if m is None:
        raise ValueError(f"not an ISO 8601 timestamp: {_short(value)}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        datetime(year, month, day, hour, minute, second)  # range check: Feb 30, hour 24 ...
    except ValueError:
        raise ValueError(f"not a valid date/time: {_short(value)}") from None
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    micros = int(((m.group(7) or "") + "000000")[:6])
    zone = m.group(8)
    if zone and zone not in ("Z", "z"):
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 3600 + int(digits[2:]) * 60
        seconds -= offset if zone[0] == "+" else -offset
    return seconds * 1_000_000 + micros


def parse_timestamps(values: Sequence[Any]) -> tuple[pa.TimestampArray, dict[int, str]]:
    """ISO 8601 strings (or None) -> timestamp[us, UTC], plus {index: error} for bad values.

    Vectorised through Arrow; only when that fails are values parsed one by one. Bad values
    become nulls in the array and are listed in the error map.
    """
    try:
        arr = pa.array(values, type=pa.string())
        ns = arr.cast(pa.timestamp("ns", tz="UTC"))
        return ns.cast(TS, safe=False), {}
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    out: list[int | None] = []
    errors: dict[int, str] = {}
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        try:
            out.append(parse_iso_us(v))
        except ValueError as e:
            out.append(None)
            errors[i] = str(e)
    return pa.array(out, type=pa.int64()).cast(TS), errors


# --------------------------------------------------------------------------------------------
# typed columns from JSON values


def _floats(values: list[Any]) -> tuple[pa.Array, dict[int, str]]:
    try:
        arr = pa.array(values)
        if pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_null(
            arr.type
        ):
            return arr.cast(pa.float64()), {}
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    out: list[float | None] = []
    errors: dict[int, str] = {}
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out.append(float(v))
        else:
            out.append(None)
            errors[i] = f"expected a number, got {_short(v)}"
    return pa.array(out, type=pa.float64()), errors


def _strings(values: list[Any]) -> tuple[pa.Array, dict[int, str]]:
    try:
        return pa.array(values, type=pa.string()), {}
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    out: list[str | None] = []
    errors: dict[int, str] = {}
    for i, v in enumerate(values):
        if v is None or isinstance(v, str):
            out.append(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            out.append(str(v))  # numeric ids: the CSV datasets hold them as text
        else:
            out.append(None)
            errors[i] = f"expected a string, got {_short(v)}"
    return pa.array(out, type=pa.string()), errors


def _bools(values: list[Any]) -> tuple[pa.Array, dict[int, str]]:
    errors = {i: f"expected true or false, got {_short(v)}" for i, v in enumerate(values)
              if v is not None and not isinstance(v, bool)}
    clean = [None if i in errors else v for i, v in enumerate(values)] if errors else values
    return pa.array(clean, type=pa.bool_()), errors


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------------------------
# batch building

#: (column, JSON key, kind) of the single-row-per-message data types, after the base columns.
_F, _S, _T = "f64", "str", "ts"
_FIELDS: dict[str, list[tuple[str, str, str]]] = {
    "trades": [("id", "id", _S), ("side", "side", _S), ("price", "price", _F),
               ("amount", "amount", _F)],
    "derivative_ticker": [
        ("funding_timestamp", "fundingTimestamp", _T), ("funding_rate", "fundingRate", _F),
        ("predicted_funding_rate", "predictedFundingRate", _F),
        ("open_interest", "openInterest", _F), ("last_price", "lastPrice", _F),
        ("index_price", "indexPrice", _F), ("mark_price", "markPrice", _F),
    ],
    "options_chain": [
        ("type", "optionType", _S), ("strike_price", "strikePrice", _F),
        ("expiration", "expirationDate", _T), ("open_interest", "openInterest", _F),
        ("last_price", "lastPrice", _F), ("bid_price", "bestBidPrice", _F),
        ("bid_amount", "bestBidAmount", _F), ("bid_iv", "bestBidIV", _F),
        ("ask_price", "bestAskPrice", _F), ("ask_amount", "bestAskAmount", _F),
        ("ask_iv", "bestAskIV", _F), ("mark_price", "markPrice", _F),
        ("mark_iv", "markIV", _F), ("underlying_index", "underlyingIndex", _S),
        ("underlying_price", "underlyingPrice", _F), ("delta", "delta", _F),
        ("gamma", "gamma", _F), ("vega", "vega", _F), ("theta", "theta", _F),
        ("rho", "rho", _F),
    ],
}
_FIELDS["liquidations"] = _FIELDS["trades"]
_CONVERT: dict[str, Callable[[list[Any]], tuple[pa.Array, dict[int, str]]]] = {
    _F: _floats, _S: _strings, _T: parse_timestamps,
}
_FIXED_SPECS = {s.name: s for s in (TRADES, LIQUIDATIONS, DERIVATIVE_TICKER, OPTIONS_CHAIN,
                                    QUOTES, INCREMENTAL_BOOK_L2)}


@dataclass(frozen=True, slots=True)
class BuiltBatch:
    """The valid rows of a group of messages, and why each rejected message was rejected.

    `rejected` maps a message's index in the input list to its reason. A message with a value of
    the wrong type is malformed and loses all its rows; a row that only breaks a rule of its
    data type (say a negative amount in one book_change level) is dropped alone, as the CSV
    source drops one bad line. `rows_rejected` counts the rows dropped.
    """

    batch: pa.RecordBatch
    rejected: dict[int, str]
    rows_rejected: int


def spec_of(data_type: str) -> DataTypeSpec:
    """The DataTypeSpec of a data type this module builds (book snapshot specs cached)."""
    spec = _FIXED_SPECS.get(data_type)
    if spec is None:
        if not data_type.startswith("book_snapshot_"):
            raise KeyError(f"no normalized mapping for data type {data_type!r}")
        spec = book_snapshot_spec(int(data_type.rsplit("_", 1)[1]))
        _FIXED_SPECS[data_type] = spec
    return spec


class _Errors:
    """Per-message type errors collected while converting columns."""

    def __init__(self) -> None:
        self.by_message: dict[int, list[str]] = {}

    def add(self, index: int, reason: str) -> None:
        self.by_message.setdefault(index, []).append(reason)

    def column(self, name: str, result: tuple[pa.Array, dict[int, str]],
               owner: np.ndarray | None = None) -> pa.Array:
        arr, errs = result
        for i, e in errs.items():
            self.add(int(owner[i]) if owner is not None else i, f"{name}: {e}")
        return arr


def _field(messages: Sequence[Message], key: str) -> list[Any]:
    """One field of every message (None where absent); map over dict.get is the fast path."""
    return [*map(dict.get, messages, repeat(key))]


def build_batch(data_type: str, exchange: str, symbol: str,
                messages: Sequence[Message]) -> BuiltBatch:
    """Arrow rows (schema of `data_type`) for messages of one (exchange, symbol, data type)."""
    spec = spec_of(data_type)
    if data_type == "incremental_book_L2":
        return _build_book_changes(spec, exchange, symbol, messages)
    n = len(messages)
    errors = _Errors()
    columns: dict[str, pa.Array] = {
        "exchange": pa.array([exchange] * n, type=pa.string()),
        "symbol": pa.array([symbol] * n, type=pa.string()),
        "timestamp": errors.column(
            "timestamp", parse_timestamps(_field(messages, "timestamp"))),
        "local_timestamp": errors.column(
            "local_timestamp", parse_timestamps(_field(messages, "localTimestamp"))),
    }
    if data_type.startswith("book_snapshot_"):
        columns.update(_snapshot_columns(spec, messages, errors))
    elif data_type == "quotes":
        columns.update(_quote_columns(messages, errors))
    else:
        for column, key, kind in _FIELDS[data_type]:
            columns[column] = errors.column(column, _CONVERT[kind](_field(messages, key)))
    batch = pa.RecordBatch.from_arrays([columns[f.name] for f in spec.schema],
                                       schema=spec.schema)
    return _finish(spec, batch, errors.by_message, None, None)


def build_batches(data_type: str, groups: Sequence[tuple[str, str, Sequence[Message]]]
                  ) -> list[BuiltBatch]:
    """`build_batch` for several (exchange, symbol, messages) groups of one data type at once.

    The live source flushes many symbols' micro-batches together; building them as one Arrow
    batch and slicing it per group costs one fixed overhead instead of one per symbol (the
    fixed part dominates below a few hundred messages). Results equal `build_batch` per group,
    with `rejected` indexed within each group.
    """
    if len(groups) == 1 or data_type == "incremental_book_L2":  # book_change: rows != messages
        return [build_batch(data_type, e, s, m) for e, s, m in groups]
    counts = np.array([len(m) for _, _, m in groups], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    exchange0, symbol0 = groups[0][0], groups[0][1]
    whole = build_batch(data_type, exchange0, symbol0, [m for _, _, ms in groups for m in ms])
    owner = np.repeat(np.arange(len(groups)), counts)  # one row per message
    rejected_at = np.fromiter(whole.rejected, dtype=np.int64, count=len(whole.rejected))
    kept = np.bincount(np.delete(owner, rejected_at), minlength=len(groups))
    rejected: list[dict[int, str]] = [{} for _ in groups]
    for i, why in whole.rejected.items():
        g = int(owner[i])
        rejected[g][i - int(starts[g])] = why
    out: list[BuiltBatch] = []
    offset = 0
    names = whole.batch.schema.names
    ex_col, sym_col = names.index("exchange"), names.index("symbol")
    for g, (exchange, symbol, _) in enumerate(groups):
        part = whole.batch.slice(offset, int(kept[g]))
        offset += int(kept[g])
        if exchange != exchange0:
            part = part.set_column(ex_col, part.schema.field(ex_col),
                                   pa.repeat(pa.scalar(exchange, pa.string()), len(part)))
        if symbol != symbol0:
            part = part.set_column(sym_col, part.schema.field(sym_col),
                                   pa.repeat(pa.scalar(symbol, pa.string()), len(part)))
        out.append(BuiltBatch(part, rejected[g], len(rejected[g])))
    return out


def _levels(messages: Sequence[Message], key: str, errors: _Errors) -> list[list[Any]]:
    out: list[list[Any]] = []
    for i, m in enumerate(messages):
        levels = m.get(key)
        if isinstance(levels, list):
            out.append(levels)
        else:
            errors.add(i, f"{key}: expected a list of levels, got {_short(levels)}")
            out.append([])
    return out


def _level_value(levels: list[Any], level: int, what: str) -> Any:
    if len(levels) <= level:
        return None
    lv = levels[level]
    return lv.get(what) if isinstance(lv, dict) else lv


def _snapshot_columns(spec: DataTypeSpec, messages: Sequence[Message],
                      errors: _Errors) -> dict[str, pa.Array]:
    depth = (len(spec.schema) - 4) // 4
    sides = {side: _levels(messages, side, errors) for side in ("asks", "bids")}
    columns: dict[str, pa.Array] = {}
    for side, per_message in sides.items():
        for level in range(depth):
            for what in ("price", "amount"):
                name = f"{side}_{level}_{what}"
                values = [_level_value(lv, level, what) for lv in per_message]
                columns[name] = errors.column(name, _floats(values))
    return columns


def _quote_columns(messages: Sequence[Message], errors: _Errors) -> dict[str, pa.Array]:
    sides = {side: _levels(messages, side, errors) for side in ("asks", "bids")}
    columns: dict[str, pa.Array] = {}
    for column, side, what in (("ask_amount", "asks", "amount"), ("ask_price", "asks", "price"),
                               ("bid_price", "bids", "price"), ("bid_amount", "bids", "amount")):
        values = [_level_value(lv, 0, what) for lv in sides[side]]
        columns[column] = errors.column(column, _floats(values))
    return columns


def _build_book_changes(spec: DataTypeSpec, exchange: str, symbol: str,
                        messages: Sequence[Message]) -> BuiltBatch:
    """One row per level, asks before bids within a message (as in the Tardis CSV files)."""
    errors = _Errors()
    counts: list[int] = []
    sides: list[str] = []
    labels: list[str] = []
    prices: list[Any] = []
    amounts: list[Any] = []
    asks = _levels(messages, "asks", errors)
    bids = _levels(messages, "bids", errors)
    for i in range(len(messages)):
        for side, key, levels in (("ask", "asks", asks[i]), ("bid", "bids", bids[i])):
            for k, lv in enumerate(levels):
                if isinstance(lv, dict):
                    prices.append(lv.get("price"))
                    amounts.append(lv.get("amount"))
                else:
                    prices.append(None)
                    amounts.append(None)
                    errors.add(i, f"{key}[{k}]: expected an object, got {_short(lv)}")
                sides.append(side)
                labels.append(f"{key}[{k}]")
        counts.append(len(asks[i]) + len(bids[i]))
    owner = np.repeat(np.arange(len(messages), dtype=np.int64), counts)
    expand = pa.array(owner, type=pa.int64())

    def per_message(name: str, key: str,
                    conv: Callable[[list[Any]], tuple[pa.Array, dict[int, str]]]) -> pa.Array:
        return errors.column(name, conv([m.get(key) for m in messages])).take(expand)

    n = len(owner)
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array([exchange] * n, type=pa.string()),
            pa.array([symbol] * n, type=pa.string()),
            per_message("timestamp", "timestamp", parse_timestamps),
            per_message("local_timestamp", "localTimestamp", parse_timestamps),
            per_message("is_snapshot", "isSnapshot", _bools),
            pa.array(sides, type=pa.string()),
            errors.column("price", _floats(prices), owner),
            errors.column("amount", _floats(amounts), owner),
        ],
        schema=spec.schema,
    )
    return _finish(spec, batch, errors.by_message, owner, labels)


_VALUE_SETS: dict[frozenset[str], pa.Array] = {}


def _value_set(allowed: frozenset[str]) -> pa.Array:
    arr = _VALUE_SETS.get(allowed)
    if arr is None:
        arr = _VALUE_SETS[allowed] = pa.array(sorted(allowed), pa.string())
    return arr


def _obeys_rules(spec: DataTypeSpec, batch: pa.RecordBatch) -> bool:
    """True when no row can break a rule: the usual case, checked with a few cheap calls
    (numpy on null-free number columns) instead of one mask per rule."""
    for col in spec.required:
        if batch.column(col).null_count:
            return False
    for cols, bad in ((spec.positive, np.less_equal), (spec.non_negative, np.less)):
        for col in cols:
            column = batch.column(col)
            if column.null_count or not pa.types.is_floating(column.type):
                return False
            if bad(column.to_numpy(), 0).any():
                return False
    for col, allowed in spec.enums.items():
        column = batch.column(col)
        if column.null_count:
            return False
        ok = pc.is_in(column, value_set=_value_set(allowed))
        if ok.false_count or ok.null_count:
            return False
    return True


def rule_violations(spec: DataTypeSpec, batch: pa.RecordBatch) -> dict[int, list[str]]:
    """Rows breaking the spec's rules (required, positive, non-negative, enums), vectorised."""
    if batch.num_rows == 0 or _obeys_rules(spec, batch):
        return {}
    rules: list[tuple[pa.Array, str]] = []
    for col in spec.required:
        column = batch.column(col)
        if column.null_count:
            rules.append((pc.is_null(column), f"{col}: missing"))
    for col in spec.positive:
        rules.append((pc.fill_null(pc.less_equal(batch.column(col), 0), False),
                      f"{col}: must be > 0"))
    for col in spec.non_negative:
        rules.append((pc.fill_null(pc.less(batch.column(col), 0), False),
                      f"{col}: must be >= 0"))
    for col, allowed in spec.enums.items():
        column = batch.column(col)
        ok = pc.is_in(column, value_set=_value_set(allowed))
        rules.append((pc.and_(pc.invert(ok), pc.is_valid(column)),
                      f"{col}: must be one of {', '.join(sorted(allowed))}"))
    if not rules:
        return {}
    any_bad = rules[0][0]
    for mask, _ in rules[1:]:
        any_bad = pc.or_(any_bad, mask)
    if not pc.any(any_bad).as_py():
        return {}
    out: dict[int, list[str]] = {}
    for r in np.flatnonzero(any_bad.to_numpy(zero_copy_only=False)):
        row = int(r)
        out[row] = [reason for mask, reason in rules if mask[row].as_py()]
    return out


def _finish(spec: DataTypeSpec, batch: pa.RecordBatch, errors: dict[int, list[str]],
            owner: np.ndarray | None, labels: list[str] | None) -> BuiltBatch:
    """Drop the rows of malformed messages and the rows breaking the spec's rules."""
    violations = rule_violations(spec, batch)
    if not errors and not violations:
        return BuiltBatch(batch, {}, 0)
    reasons: dict[int, list[str]] = {i: list(v) for i, v in errors.items()}
    if owner is None:
        bad_rows = np.zeros(batch.num_rows, dtype=bool)
        bad_rows[list(errors)] = True
        for r, why in violations.items():
            if r not in errors:  # a malformed value already explains its nulls
                bad_rows[r] = True
                reasons.setdefault(r, []).extend(why)
    else:
        bad_msgs = np.zeros(len(owner) and int(owner.max()) + 1, dtype=bool)
        bad_msgs[[i for i in errors if i < len(bad_msgs)]] = True
        bad_rows = bad_msgs[owner] if len(owner) else np.zeros(0, dtype=bool)
        for r, why in violations.items():
            if int(owner[r]) in errors:
                continue
            bad_rows[r] = True
            where = labels[r] if labels else f"row {r}"
            reasons.setdefault(int(owner[r]), []).extend(f"{where}: {w}" for w in why)
    good = batch.filter(pa.array(~bad_rows)) if bad_rows.any() else batch
    rejected = {i: "; ".join(dict.fromkeys(v)) for i, v in sorted(reasons.items())}
    return BuiltBatch(good, rejected, int(bad_rows.sum()))
