"""Change events (added, changed, delisted), the sync status, and the diff that makes them.

A sync of one Tardis exchange yields a full snapshot of its instruments; `diff_snapshot`
compares it with the previous one. A failed sync never looks like a mass delisting: it yields a
`SyncStatus` with `ok=False` and the previous definitions stay (and are served, marked stale).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from connectors.instruments.definition import CONTENT_FIELDS, InstrumentDefinition

ChangeKind = Literal["added", "changed", "delisted"]


class InstrumentChange(BaseModel):
    """One instrument added, changed or delisted in a sync.

    `definition` is the new definition (for `delisted`, the last known one); `changes` maps
    each changed field to [old, new] in JSON form.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ChangeKind
    exchange: str = Field(description="Tardis exchange id")
    symbol: str = Field(description="Tardis symbol")
    at: datetime
    definition: InstrumentDefinition
    changes: dict[str, tuple[Any, Any]] = Field(default_factory=dict)

    def describe(self) -> str:
        """One log line: 'binance-futures BTCUSDT changed: tick_size 0.1 -> 0.01'."""
        head = f"{self.exchange} {self.symbol} {self.kind}"
        if self.kind == "changed":
            parts = [f"{k} {old} -> {new}" for k, (old, new) in sorted(self.changes.items())]
            return f"{head}: {', '.join(parts)}"
        return f"{head} ({self.definition.ccxt_symbol}, {self.definition.type})"


class SyncStatus(BaseModel):
    """The outcome of one sync of one Tardis exchange (`kind` = "status")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["status"] = "status"
    exchange: str
    at: datetime = Field(description="when the sync finished")
    ok: bool
    instruments: int = Field(ge=0, description="definitions held after this sync")
    added: int = 0
    changed: int = 0
    delisted: int = 0
    last_success: datetime | None = None
    error: str | None = None

    @classmethod
    def succeeded(cls, exchange: str, at: datetime, instruments: int,
                  changes: list[InstrumentChange]) -> SyncStatus:
        """The status of a successful sync that produced `changes`."""
        return cls(exchange=exchange, at=at, ok=True, instruments=instruments, last_success=at,
                   added=sum(c.kind == "added" for c in changes),
                   changed=sum(c.kind == "changed" for c in changes),
                   delisted=sum(c.kind == "delisted" for c in changes))

    def describe(self) -> str:
        if self.ok:
            return (f"{self.exchange}: synced {self.instruments} instruments "
                    f"(+{self.added} ~{self.changed} -{self.delisted})")
        since = self.last_success.isoformat() if self.last_success else "never"
        return (f"{self.exchange}: sync failed, serving {self.instruments} cached definitions "
                f"(stale, last success {since}): {self.error}")


InstrumentEvent = Annotated[InstrumentChange | SyncStatus, Field(discriminator="kind")]
_EVENT_ADAPTER: TypeAdapter[InstrumentChange | SyncStatus] = TypeAdapter(InstrumentEvent)


def event_to_json(event: InstrumentChange | SyncStatus) -> str:
    """JSON of an event; definitions carry only their content."""
    if isinstance(event, InstrumentChange):
        data = event.model_dump(mode="json", exclude={"definition"})
        data["definition"] = event.definition.content()
        return _dumps(data)
    return event.model_dump_json()


def event_from_json(text: str | bytes) -> InstrumentChange | SyncStatus:
    """Parse what `event_to_json` wrote."""
    return _EVENT_ADAPTER.validate_json(text)


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def changed_fields(old: InstrumentDefinition, new: InstrumentDefinition) -> dict[str, tuple[Any,
                                                                                         Any]]:
    """{field: (old, new)} for the content fields that differ (JSON form)."""
    a, b = old.content(), new.content()
    out: dict[str, tuple[Any, Any]] = {}
    for name in CONTENT_FIELDS:
        if getattr(old, name) != getattr(new, name):
            out[name] = (a[name], b[name])
    return out


class SnapshotRejected(ValueError):
    """A snapshot that would delist more than the allowed share of an exchange's instruments."""


def diff_snapshot(
    exchange: str,
    previous: Mapping[str, InstrumentDefinition],
    current: Mapping[str, InstrumentDefinition],
    at: datetime,
    *,
    max_delisted_fraction: float = 1.0,
) -> list[InstrumentChange]:
    """Events that turn `previous` into `current` (both keyed by Tardis symbol), sorted by
    kind and symbol so replays are deterministic.

    Raises SnapshotRejected when more than `max_delisted_fraction` of the previous instruments
    vanish at once (a truncated response looks like that; a real venue rarely does it).
    """
    if not 0.0 <= max_delisted_fraction <= 1.0:
        raise ValueError(f"max_delisted_fraction must be within [0, 1], got "
                         f"{max_delisted_fraction}")
    gone = sorted(set(previous) - set(current))
    if previous and len(gone) > max_delisted_fraction * len(previous):
        raise SnapshotRejected(
            f"{exchange}: the new listing drops {len(gone)} of {len(previous)} instruments "
            f"(more than {max_delisted_fraction:.0%}); keeping the previous definitions")
    events: list[InstrumentChange] = []
    for symbol in sorted(set(current) - set(previous)):
        events.append(InstrumentChange(kind="added", exchange=exchange, symbol=symbol, at=at,
                                       definition=current[symbol]))
    for symbol in sorted(set(current) & set(previous)):
        changes = changed_fields(previous[symbol], current[symbol])
        if changes:
            events.append(InstrumentChange(kind="changed", exchange=exchange, symbol=symbol,
                                           at=at, definition=current[symbol], changes=changes))
    for symbol in gone:
        events.append(InstrumentChange(kind="delisted", exchange=exchange, symbol=symbol, at=at,
                                       definition=previous[symbol]))
    return events
