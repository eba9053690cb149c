"""Running the real flow in-process for tests: a replay of files into a temporary output."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from bytewax.testing import run_main

from connectors.sinks.parquet import read_table
from dataflows.config import config_from_dict
from dataflows.main import build_flow
from dataflows.plan import plan_run
from operators import metrics


def replay_to_parquet(inputs: list[str], out: Path, *, mode: str | None = None,
                      **config: Any) -> dict[str, pa.Table]:
    """Replay `inputs` through dataflows.main's flow into Parquet under `out`; returns every
    table written, read back (deduplicated on row_key)."""
    cfg = config_from_dict({"outputs": {"dead_letter_path": str(out / "dead_letter")},
                            **config})
    plan = plan_run(cfg, mode=mode, inputs=inputs, output=str(out))
    metrics.reset_all()
    run_main(build_flow(cfg, plan, flow_id="test_replay"))
    return {p.name: read_table(out, p.name) for p in sorted(out.iterdir())
            if p.is_dir() and p.name != "dead_letter"}


def dead_letters(out: Path) -> list[dict]:
    import json

    rows = []
    for f in sorted((out / "dead_letter").glob("*.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line]
    return rows


def sigkill_at_random_points(start: Callable[[], subprocess.Popen[str]],
                             started: Callable[[subprocess.Popen[str]], bool],
                             rng: random.Random, *, kills: int = 3,
                             wait_s: tuple[float, float] = (0.05, 1.0)) -> int:
    """Start a run with `start()` up to `kills` times; once `started(proc)` says it is past
    start-up (polled for up to 120 s), SIGKILL it after a random pause. Returns how many runs
    were killed (a run that finishes first ends the series)."""
    killed = 0
    for _ in range(kills):
        proc = start()
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not started(proc):
            time.sleep(0.02)
        time.sleep(rng.uniform(*wait_s))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed += 1
    return killed
