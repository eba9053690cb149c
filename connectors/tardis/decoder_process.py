"""`decoder: process`: a tardis-machine connection received and decoded in a child process.

At high message rates the flow's process spends most of its time under the GIL cutting
WebSocket frames, decoding JSON and building Arrow batches, and the candle step's work at a
close point queues behind it. With `source.tardis_machine.decoder: process` each source
partition starts one child process (spawned, so no thread of the parent is forked) that runs
the same `LocalDecoder` as the in-process mode: connection thread, assembler, micro-batches,
gaps, dead letters, positions. The partition only receives what the child emitted.

Protocol, child -> parent, over a `multiprocessing` pipe, one message per poll that produced
anything: (items, connection events, finished, crashed, snapshot, stats). Items are the usual
TickBatch / Gap / DeadLetters (a TickBatch pickles as Arrow IPC); `snapshot` is the
assembler's resume state after those items, so the partition's `snapshot()` always matches
what it handed to Bytewax. The live clock (everything received before T is emitted) is a
shared 64-bit value the child sets after sending; the partition reads it before draining the
pipe, so it never advances past items still in the pipe.

Parent -> child: the resume state at start, "stop" at close. The child exits when told to,
when the stream finishes or crashes, or when its parent is gone.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import time
from dataclasses import fields
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from dataflows.config import TardisMachineSource as TardisMachineSettings

if TYPE_CHECKING:
    from connectors.tardis.websocket import Polled

log = logging.getLogger(__name__)

_IDLE_SLEEP_S = 0.001    # the child's pause when a poll found nothing to do
_CHECK_EVERY_S = 0.05    # how often the child looks for "stop" and for its parent
_START_TIMEOUT_S = 60.0  # spawning imports pyarrow, websockets and the package
_STOP_TIMEOUT_S = 5.0


def _child_main(settings_data: dict[str, Any], exchanges: list[str],
                resume_state: dict[str, Any] | None, name: str, pipe: Connection,
                clock: Any, parent_pid: int) -> None:
    """The child process: poll the decoder, send what it gives, until stopped."""
    from connectors.tardis.websocket import LocalDecoder, SourceStats

    settings = TardisMachineSettings.model_validate(settings_data)
    stats = SourceStats()
    decoder = LocalDecoder(settings, exchanges, resume_state, stats, name)
    pipe.send(("ready", decoder.snapshot()))
    next_check = 0.0
    try:
        while True:
            now = time.monotonic()
            if now >= next_check:  # the parent's "stop", or the parent gone (syscalls: rarely)
                next_check = now + _CHECK_EVERY_S
                if (pipe.poll() and pipe.recv() == "stop") or os.getppid() != parent_pid:
                    return
            polled = decoder.poll()
            done = polled.finished or polled.crashed is not None
            if polled.items or polled.events or done:
                pipe.send(("items", polled.items, polled.events, polled.finished,
                           polled.crashed, decoder.snapshot(), stats.as_dict()))
            if polled.clock_us is not None:
                clock.value = polled.clock_us  # after the items it covers were sent
            if done:
                return
            if not polled.items and decoder.idle:
                time.sleep(_IDLE_SLEEP_S)
    except (OSError, EOFError, KeyboardInterrupt):
        return  # the parent closed its end or went away (broken pipe, connection reset)
    finally:
        decoder.close()


class ProcessDecoder:
    """The partition's side of a decoder process: the same `poll`/`snapshot`/`close` as
    `LocalDecoder`, fed by the child."""

    def __init__(self, settings: TardisMachineSettings, exchanges: list[str],
                 resume_state: dict[str, Any] | None, stats: Any, name: str) -> None:
        from connectors.tardis.websocket import _revalidatable

        self.replay = settings.replay_from is not None
        self.stats = stats
        self._snapshot = resume_state
        self._finished = False
        ctx = mp.get_context("spawn")
        self._pipe, child_end = ctx.Pipe(duplex=True)
        self._clock = ctx.Value("q", -1, lock=False)
        self._proc = ctx.Process(
            target=_child_main, name=f"tardis-decoder:{name}", daemon=True,
            args=(_revalidatable(settings), exchanges, resume_state, name, child_end,
                  self._clock, os.getpid()))
        self._proc.start()
        child_end.close()
        if not self._pipe.poll(_START_TIMEOUT_S):
            self.close()
            raise RuntimeError(f"tardis-machine decoder process for {name} did not start "
                               f"within {_START_TIMEOUT_S:.0f} s")
        try:
            _, self._snapshot = self._pipe.recv()  # ("ready", the resume state it starts from)
        except EOFError:
            code = self._proc.exitcode
            self.close()
            raise RuntimeError(f"tardis-machine decoder process for {name} exited at start "
                               f"(exit code {code}); see its error above") from None

    def poll(self) -> Polled:
        from connectors.tardis.websocket import Polled

        # The clock first: it covers only items already in the pipe, drained below.
        clock = int(self._clock.value) if not self.replay else -1
        items: list[Any] = []
        events: list[tuple[str, str]] = []
        crashed: str | None = None
        while not self._finished and self._pipe.poll():
            try:
                msg = self._pipe.recv()
            except (EOFError, OSError):  # the child died mid-message
                crashed = self._exit_reason()
                break
            _, got, evs, finished, crash, snapshot, stats = msg
            items.extend(got)
            events.extend(evs)
            self._snapshot = snapshot
            self._apply_stats(stats)
            if crash is not None:
                crashed = crash
                break
            if finished:
                self._finished = True
        if crashed is None and not self._finished and not self._proc.is_alive() \
                and not self._pipe.poll():
            crashed = self._exit_reason()
        return Polled(items, events, clock if clock >= 0 else None,
                      finished=self._finished, crashed=crashed)

    def _exit_reason(self) -> str:
        self._proc.join(0.5)
        return (f"the decoder process exited unexpectedly (exit code {self._proc.exitcode})")

    def _apply_stats(self, values: dict[str, Any]) -> None:
        for f in fields(self.stats):
            if f.name in values:
                setattr(self.stats, f.name, values[f.name])

    def snapshot(self) -> dict[str, Any]:
        assert self._snapshot is not None  # set by the child's "ready" message
        return self._snapshot

    def close(self) -> None:
        proc = self._proc
        if proc.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self._pipe.send("stop")
            proc.join(_STOP_TIMEOUT_S)
            if proc.is_alive():
                log.warning("tardis-machine decoder process %s did not stop; terminating it",
                            proc.name)
                proc.terminate()
                proc.join(_STOP_TIMEOUT_S)
        self._pipe.close()
