"""Connection state of the flow's sources, which /health and /metrics report.

A source partition registers itself once and reports what happens to it:

    status = source_status("tardis-machine:binance", live=True)
    status.connected()           # on every (re)connect; a second connect counts a reconnect
    status.message()             # when a batch leaves the source (wall clock, default now)
    status.disconnected(reason)  # on a lost connection
    status.done()                # at the end of a replay / a normal close
    status.failed(reason)        # a permanent failure: /health turns failing

Calls are cheap (a lock and a few assignments) and meant once per batch, not per row. Live
sources are checked for staleness (no message for longer than their bound); replay sources
(`live=False`) only report progress.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from operators import metrics

Clock = Callable[[], float]

CONNECTED, DISCONNECTED, IDLE, DONE, FAILED = "connected", "disconnected", "idle", "done", "failed"

_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]*@")
_SECRET_PARAMS = re.compile(r"(?i)((?:api[_-]?key|token|secret|password|key)=)[^&\s]+")
_MAX_REASON = 300


def redact(text: str) -> str:
    """`text` with URL credentials and secret-looking query values removed, shortened."""
    text = _SECRET_PARAMS.sub(r"\1***", _CREDENTIALS.sub("***@", text))
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


@dataclass(frozen=True)
class SourceReading:
    """One source's state at one moment, as /health and /metrics report it.

    state: connected | disconnected | idle (connected, live and silent for longer than its
    stale bound) | done | failed. last_message_age_s: seconds since the last message, None
    if none yet; silent_s: seconds since the last message, or since the source started or
    (re)connected when none came since; down_s: seconds since a live source was last fine
    (connected and not stale), 0 while it is.
    """

    name: str
    live: bool
    ticks: bool
    state: str
    connected: bool
    last_message_age_s: float | None
    silent_s: float
    down_s: float
    stale_after_s: float | None
    reconnects: int
    messages: int
    reason: str | None

    def as_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "live": self.live,
            "last_message_age_s": _round(self.last_message_age_s),
            "silent_s": _round(self.silent_s),
            "stale_after_s": self.stale_after_s,
            "reconnects": self.reconnects,
            "messages": self.messages,
            "reason": self.reason,
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


class SourceStatus:
    """The reported state of one source (see the module docstring for the calls)."""

    def __init__(self, name: str, *, live: bool, ticks: bool = True,
                 stale_after_s: float | None = None, clock: Clock = time.time) -> None:
        if not name or not name.strip():
            raise ValueError("a source needs a non-empty name")
        if stale_after_s is not None and stale_after_s <= 0:
            raise ValueError(f"{name}: stale_after_s must be > 0, got {stale_after_s}")
        self.name = name
        self.live = live
        self.ticks = ticks
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self._since = now              # registration or latest (re)connect
        self._last_message: float | None = None
        self._messages = 0
        self._connected = False
        self._ever_connected = False
        self._state = CONNECTED if not live else DISCONNECTED
        self._down_since: float | None = now if live else None
        self._reconnects = 0
        self._reason: str | None = None

    def connected(self) -> None:
        """The source (re)connected; every connect after the first counts as a reconnect."""
        with self._lock:
            now = self._clock()
            if self._ever_connected and not self._connected:
                self._reconnects += 1
                metrics.RECONNECTS.inc(1, source=self.name)
            self._ever_connected = self._connected = True
            self._state = CONNECTED
            self._since = now
            self._down_since = None
            self._reason = None

    def disconnected(self, reason: str = "") -> None:
        """The connection was lost; a live source is retried by its owner."""
        with self._lock:
            if self._down_since is None and self._state not in (DONE, FAILED):
                self._down_since = self._clock()
            self._connected = False
            if self._state not in (DONE, FAILED):
                self._state = DISCONNECTED
            self._reason = redact(reason) if reason else None

    def message(self, ts: float | None = None) -> None:
        """A batch left the source; `ts` is the wall-clock time (time.time()) it arrived."""
        with self._lock:
            self._last_message = self._clock() if ts is None else float(ts)
            self._messages += 1

    def done(self) -> None:
        """The source finished (end of a replay, a normal close): no longer checked."""
        with self._lock:
            self._state = DONE
            self._connected = False
            self._down_since = None

    def failed(self, reason: str) -> None:
        """The source stopped for good: /health reports failing until the process restarts."""
        with self._lock:
            self._state = FAILED
            self._connected = False
            self._reason = redact(reason)

    def read(self, default_stale_after_s: float, now: float | None = None) -> SourceReading:
        """The state at `now` (wall clock), staleness judged against the source's own bound
        or `default_stale_after_s`."""
        with self._lock:
            now = self._clock() if now is None else now
            bound = self.stale_after_s if self.stale_after_s is not None \
                else default_stale_after_s
            last = self._last_message
            age = None if last is None else max(now - last, 0.0)
            quiet_from = self._since if last is None or last < self._since else last
            silent = max(now - quiet_from, 0.0)
            state = self._state
            if state == CONNECTED and self.live:
                if silent > bound:
                    state = IDLE
                    stale_at = quiet_from + bound
                    if self._down_since is None or self._down_since > stale_at:
                        self._down_since = stale_at
                else:
                    self._down_since = None
            down = 0.0 if self._down_since is None or state in (DONE, FAILED) \
                else max(now - self._down_since, 0.0)
            return SourceReading(
                name=self.name, live=self.live, ticks=self.ticks, state=state,
                connected=self._connected, last_message_age_s=age, silent_s=silent,
                down_s=down, stale_after_s=bound if self.live else None,
                reconnects=self._reconnects, messages=self._messages, reason=self._reason)


class SourceRegistry:
    """The process-wide set of sources, by name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, SourceStatus] = {}

    def get(self, name: str, *, live: bool = True, ticks: bool = True,
            stale_after_s: float | None = None, clock: Clock = time.time) -> SourceStatus:
        """The status named `name`, created on first use (later calls return the same one,
        e.g. for a partition rebuilt after a resume)."""
        with self._lock:
            status = self._sources.get(name)
            if status is None:
                status = SourceStatus(name, live=live, ticks=ticks,
                                      stale_after_s=stale_after_s, clock=clock)
                self._sources[name] = status
            return status

    def all(self) -> list[SourceStatus]:
        with self._lock:
            return [self._sources[k] for k in sorted(self._sources)]

    def clear(self) -> None:
        """Forget every source (tests and repeated in-process runs)."""
        with self._lock:
            self._sources.clear()


SOURCES = SourceRegistry()


def source_status(name: str, *, live: bool = True, ticks: bool = True,
                  stale_after_s: float | None = None) -> SourceStatus:
    """The process-wide status of source `name` (registered on first call).

    live: checked for staleness and disconnection (tardis-machine live, CCXT); False for file
    and tardis-machine replays. ticks: the source produces ticks, so the throughput check
    applies while it runs (False for the CCXT instruments source). stale_after_s: this
    source's own stale bound instead of `monitoring.stale_after`.
    """
    return SOURCES.get(name, live=live, ticks=ticks, stale_after_s=stale_after_s)
