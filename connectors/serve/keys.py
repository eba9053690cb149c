"""The Redis key layout of serve mode, and stream entry IDs.

Per (exchange, symbol, timeframe), with the default prefix `candles`:

- `candles:{binance:BTCUSDT:1m}:stream`: a Redis Stream, one entry per closed candle, field
  `d` = the candle row as JSON (orjson); entry ID `<interval start in ms>-0`;
- `candles:{binance:BTCUSDT:1m}:latest`: a hash with `id` (that entry ID) and `d` (the same
  JSON) of the newest candle.

The braces are a Redis Cluster hash tag: both keys of a series live in one slot, so the
write script may touch both. Entry IDs come from the candle, not from the server clock, so a
replay or a retry writes the same IDs and Redis refuses any ID not above the stream's top.
"""

from __future__ import annotations

import re

DEFAULT_PREFIX = "candles"
PAYLOAD_FIELD = "d"
ID_FIELD = "id"

_BAD = re.compile(r"[{}\s]")
_ID_RE = re.compile(r"^(\d+)(?:-(\d+))?$")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")

EntryPos = tuple[int, int]


def _check(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if _BAD.search(value):
        raise ValueError(f"{name} {value!r} must not contain braces or whitespace")
    return value


def series_tag(exchange: str, symbol: str, timeframe: str) -> str:
    """`exchange:symbol:timeframe`, validated."""
    return ":".join((_check("exchange", exchange), _check("symbol", symbol),
                     _check("timeframe", timeframe)))


def stream_key(prefix: str, exchange: str, symbol: str, timeframe: str) -> str:
    """The Redis Stream holding every closed candle of one series."""
    return f"{_check('key_prefix', prefix)}:{{{series_tag(exchange, symbol, timeframe)}}}:stream"


def latest_key(prefix: str, exchange: str, symbol: str, timeframe: str) -> str:
    """The hash holding the newest candle of one series."""
    return f"{_check('key_prefix', prefix)}:{{{series_tag(exchange, symbol, timeframe)}}}:latest"


def latest_key_of(stream: str) -> str:
    """The latest-candle key beside a stream key."""
    if not stream.endswith(":stream"):
        raise ValueError(f"{stream!r} is not a serve stream key")
    return stream[: -len(":stream")] + ":latest"


def stream_pattern(prefix: str, symbol: str, timeframe: str) -> str:
    """A SCAN MATCH pattern for the streams of `symbol`/`timeframe` on any exchange."""
    tag = _glob_escape(f"{_check('symbol', symbol)}:{_check('timeframe', timeframe)}")
    return f"{_glob_escape(_check('key_prefix', prefix))}:{{*:{tag}}}:stream"


def _glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def exchange_of(stream: str, prefix: str) -> str:
    """The exchange named in a stream key."""
    head = f"{prefix}:{{"
    if not stream.startswith(head):
        raise ValueError(f"{stream!r} is not under prefix {prefix!r}")
    return stream[len(head):].split(":", 1)[0]


_TF_RE = re.compile(r"^(\d+)(s|m|h|d)$")
_TF_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def timeframe_ms(label: str) -> int | None:
    """Length of a timeframe label ("15s", "1m", "4h", "1d") in ms; None if not of that form."""
    m = _TF_RE.match(label)
    return int(m.group(1)) * _TF_UNIT_MS[m.group(2)] if m else None


def entry_id(start_ms: int) -> str:
    """Stream entry ID of the candle whose interval starts at `start_ms` (Unix ms)."""
    if start_ms <= 0:
        raise ValueError(f"a candle start must be after the Unix epoch, got {start_ms} ms")
    return f"{start_ms}-0"


def parse_id(value: str | bytes) -> EntryPos:
    """`"<ms>-<seq>"` (or `"<ms>"`) as a comparable (ms, seq) tuple."""
    text = value.decode() if isinstance(value, bytes) else value
    m = _ID_RE.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"not a stream entry ID: {value!r} (expected '<ms>-<seq>')")
    return int(m.group(1)), int(m.group(2) or 0)


def format_id(pos: EntryPos) -> str:
    return f"{pos[0]}-{pos[1]}"
