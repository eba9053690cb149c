"""A run plan: streaming.yaml plus command-line and environment overrides, resolved once.

Everything a flow factory needs to decide which source, steps and sinks to build: the mode,
its outputs, the inputs, where files go. Paths in streaming.yaml are relative to the file;
paths given on the command line are relative to the working directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from dataflows.config import ConfigError, StreamingConfig

CANDLE_MODES = ("streaming-candles-serve", "streaming-candles-bigquery")
TICK_MODES = ("streaming-ticks-bigquery",)


@dataclass(frozen=True)
class RunPlan:
    """What one run does, resolved from config, CLI and environment."""

    mode: str
    outputs: tuple[str, ...]          # "persist" and/or "serve"
    source_kind: str                  # "files" | "tardis-machine"
    inputs: tuple[str, ...]           # file globs, for the files source
    persist_backend: str              # "parquet" | "bigquery" | "jsonl"
    parquet_dir: Path
    jsonl_target: str | None          # "-" (stdout) or a .jsonl path
    stdout: bool                      # also print candles as JSON lines
    serve_transport: str              # "memory" | "redis"
    redis_url: str
    tardis_machine_url: str
    dead_letter_dir: Path | None
    wall_clock: bool                  # close candles by wall clock too (live sources)
    live_source: bool = False         # a live tardis-machine stream (not a replay)
    stable_run_id: str | None = None  # recovery on: Parquet file names survive restarts

    @property
    def candles(self) -> bool:
        return self.mode in CANDLE_MODES

    @property
    def ticks(self) -> bool:
        return self.mode in TICK_MODES


def with_recovery(plan: RunPlan, recovery_dir: Path | None) -> RunPlan:
    """The plan of a run that uses a recovery store: its Parquet run id is derived from the
    store, so a restarted run can find (and truncate) the files it wrote before."""
    if recovery_dir is None:
        return plan
    import hashlib

    digest = hashlib.sha1(str(Path(recovery_dir).resolve()).encode()).hexdigest()[:12]
    return replace(plan, stable_run_id=f"rec{digest}")


def plan_run(
    cfg: StreamingConfig,
    *,
    mode: str | None = None,
    inputs: Sequence[str] | None = None,
    output: str | None = None,
    env: Mapping[str, str] | None = None,
) -> RunPlan:
    """Resolve a run. `mode`, `inputs` and `output` come from the command line (replay)."""
    env = os.environ if env is None else env
    run_mode = mode or cfg.mode
    outputs: tuple[str, ...]
    if mode and mode != cfg.mode:
        outputs = ("serve",) if mode == "streaming-candles-serve" else ("persist",)
    else:
        outputs = tuple(cfg.outputs_for_mode())

    source_kind = "files" if inputs else cfg.source.kind
    if inputs:
        globs = tuple(inputs)
    else:
        globs = tuple(str(cfg.resolve_path(p)) for p in cfg.source.files.paths)
    if source_kind == "files" and not globs and run_mode != "live-instruments-sync":
        raise ConfigError("no input files: set source.files.paths or pass --input")

    backend: str = cfg.persist.backend
    parquet_dir = cfg.resolve_path(cfg.persist.parquet.path)
    jsonl_target = None
    if output is not None:
        if output == "-" or output.endswith(".jsonl"):
            backend, jsonl_target = "jsonl", output
        else:
            backend, parquet_dir = "parquet", Path(output).expanduser().resolve()
        if "persist" not in outputs:
            outputs = (*outputs, "persist")

    dead = cfg.outputs.dead_letter_path
    dead_dir = cfg.resolve_path(dead) if dead else None
    if dead_dir is not None and output is not None and backend == "parquet":
        dead_dir = parquet_dir / "dead_letter"  # a replay's dead letters sit beside its output
    live_source = source_kind == "tardis-machine" and not cfg.source.tardis_machine.replay_from
    wall_clock = cfg.candles.wall_clock_close
    if wall_clock == "auto":
        wall_clock = live_source
    return RunPlan(
        mode=run_mode,
        outputs=outputs,
        source_kind=source_kind,
        inputs=globs,
        persist_backend=backend,
        parquet_dir=parquet_dir,
        jsonl_target=jsonl_target,
        stdout=cfg.outputs.stdout,
        serve_transport=cfg.serve.transport,
        redis_url=env.get("REDIS_URL") or cfg.serve.redis_url,
        tardis_machine_url=env.get("TARDIS_MACHINE_URL") or cfg.source.tardis_machine.url,
        dead_letter_dir=dead_dir,
        wall_clock=bool(wall_clock),
        live_source=live_source,
    )
