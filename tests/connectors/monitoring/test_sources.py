"""SourceStatus: the state a source reports, judged on an explicit clock."""

from __future__ import annotations

import pytest

from connectors.monitoring.sources import SourceRegistry, SourceStatus, redact, source_status
from operators import metrics


class Clock:
    """A settable wall clock, so states are judged at exact instants."""

    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_live_source_lifecycle_connected_idle_disconnected_reconnected_done() -> None:
    clock = Clock()
    s = SourceStatus("tm", live=True, clock=clock)
    r = s.read(10.0)
    assert r.state == "disconnected" and not r.connected   # not connected yet
    s.connected()
    s.message()
    clock.t += 9.9
    r = s.read(10.0)
    assert (r.state, r.last_message_age_s, r.down_s) == ("connected", pytest.approx(9.9), 0.0)
    clock.t += 0.2                                          # 10.1 s silent: stale
    r = s.read(10.0)
    assert r.state == "idle" and r.silent_s == pytest.approx(10.1)
    assert r.down_s == pytest.approx(0.1)                   # down since it went stale
    s.disconnected("connection reset")
    clock.t += 5
    r = s.read(10.0)
    assert (r.state, r.reason) == ("disconnected", "connection reset")
    assert r.down_s == pytest.approx(5.1)
    s.connected()
    r = s.read(10.0)
    assert (r.state, r.reconnects, r.down_s, r.silent_s) == ("connected", 1, 0.0, 0.0)
    assert metrics.RECONNECTS.value("tm") == 1
    s.done()
    clock.t += 1_000
    r = s.read(10.0)
    assert (r.state, r.down_s) == ("done", 0.0)


def test_silence_after_a_reconnect_counts_from_the_reconnect() -> None:
    clock = Clock()
    s = SourceStatus("tm", live=True, clock=clock)
    s.connected()
    s.message()
    clock.t += 100
    s.disconnected("eof")
    s.connected()                     # reconnected at t+100; the last message is older
    clock.t += 3
    r = s.read(10.0)
    assert r.state == "connected" and r.silent_s == pytest.approx(3)
    assert r.last_message_age_s == pytest.approx(103)


def test_own_stale_bound_beats_the_default() -> None:
    clock = Clock()
    s = SourceStatus("ccxt:binance", live=True, ticks=False, stale_after_s=7200, clock=clock)
    s.connected()
    s.message()
    clock.t += 3600
    assert s.read(30.0).state == "connected"
    clock.t += 3601
    r = s.read(30.0)
    assert r.state == "idle" and r.stale_after_s == 7200


def test_replay_source_is_never_stale_and_failed_is_final() -> None:
    clock = Clock()
    s = SourceStatus("files:x", live=False, clock=clock)
    assert s.read(1.0).state == "connected"
    clock.t += 1_000
    r = s.read(1.0)
    assert (r.state, r.down_s, r.stale_after_s) == ("connected", 0.0, None)
    s.failed("disk gone")
    s.disconnected("late disconnect")
    assert s.read(1.0).state == "failed"


def test_reasons_lose_credentials() -> None:
    s = SourceStatus("tm", live=True)
    s.disconnected("cannot connect to wss://user:hunter2@host:8001/ws?apiKey=abc123&x=1")
    reason = s.read(1.0).reason or ""
    assert "hunter2" not in reason and "abc123" not in reason
    assert "wss://***@host:8001" in reason and "x=1" in reason
    assert len(redact("x" * 5000)) == 300


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="name"):
        SourceStatus(" ", live=True)
    with pytest.raises(ValueError, match="stale_after_s"):
        SourceStatus("x", live=True, stale_after_s=0)


def test_registry_returns_the_same_status_per_name() -> None:
    reg = SourceRegistry()
    a = reg.get("b", live=True)
    assert reg.get("b", live=False) is a and a.live
    reg.get("a", live=False)
    assert [s.name for s in reg.all()] == ["a", "b"]
    assert source_status("p") is source_status("p")
