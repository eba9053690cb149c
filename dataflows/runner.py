"""Running a flow in this process: workers, cluster addressing and the recovery store.

Shared by `python -m dataflows.main` and the replay command, so both honour streaming.yaml's
`recovery:` section (or the -r/-s/-b flags, which win), like `python -m bytewax.run` does.
"""

from __future__ import annotations

import argparse
import gc
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from dataflows.config import ConfigError, StreamingConfig


@dataclass(frozen=True)
class RunOptions:
    """How to execute a flow: worker threads, cluster position, recovery."""

    workers: int = 1
    process_id: int | None = None
    addresses: tuple[str, ...] = ()
    recovery_dir: Path | None = None
    snapshot_interval_s: float = 10.0
    backup_interval_s: float = 0.0
    recovery_partitions: int = 1

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError("--workers must be >= 1")
        if (self.process_id is None) != (not self.addresses):
            raise ConfigError("-i/--process-id and -a/--addresses go together")
        if self.process_id is not None and not 0 <= self.process_id < len(self.addresses):
            raise ConfigError(f"process id {self.process_id} is not an index of the "
                              f"{len(self.addresses)} addresses")
        if self.snapshot_interval_s <= 0:
            raise ConfigError("the snapshot interval must be > 0 seconds")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The -w/-i/-a/-r/-s/-b flags of `python -m bytewax.run`."""
    p.add_argument("-w", "--workers", type=int, default=1, help="worker threads (default 1)")
    p.add_argument("-i", "--process-id", type=int, help="this process's index in -a")
    p.add_argument("-a", "--addresses", help="host:port of every process, ';'-separated")
    p.add_argument("-r", "--recovery", "--recovery-directory", dest="recovery",
                   help="recovery store directory (default: recovery.directory); created "
                   "and initialised when new")
    p.add_argument("-s", "--snapshot-interval", type=float,
                   help="seconds between snapshots (default: recovery.snapshot_interval)")
    p.add_argument("-b", "--backup-interval", type=float,
                   help="seconds of extra snapshots kept (default: recovery.backup_interval)")


def options_from(args: argparse.Namespace, cfg: StreamingConfig) -> RunOptions:
    rec = cfg.recovery
    directory = args.recovery or (str(cfg.resolve_path(rec.directory)) if rec.directory
                                  else None)
    return RunOptions(
        workers=args.workers,
        process_id=args.process_id,
        addresses=tuple(a for a in (args.addresses or "").split(";") if a),
        recovery_dir=Path(directory) if directory else None,
        snapshot_interval_s=(args.snapshot_interval if args.snapshot_interval is not None
                             else rec.snapshot_interval / 1e6),
        backup_interval_s=(args.backup_interval if args.backup_interval is not None
                           else rec.backup_interval / 1e6),
        recovery_partitions=rec.partitions,
    )


def recovery_config(opts: RunOptions) -> RecoveryConfig | None:
    """Bytewax's RecoveryConfig, initialising the store's partitions when it is new."""
    if opts.recovery_dir is None:
        return None
    d = opts.recovery_dir
    if d.exists() and not d.is_dir():
        raise ConfigError(f"{d}: the recovery store must be a directory")
    if not d.exists() or not any(d.iterdir()):
        d.mkdir(parents=True, exist_ok=True)
        init_db_dir(d, opts.recovery_partitions)
    return RecoveryConfig(str(d), timedelta(seconds=opts.backup_interval_s))


def settle_heap() -> None:
    """Before a long run: collect once, then move every object alive (modules, compiled
    kernels, the built flow: hundreds of thousands of objects) out of the garbage collector's
    reach (`gc.freeze`). A full collection then scans only what the run allocated since; one
    over the whole heap paused the flow for 62 ms on the benchmark machine, which alone puts
    the candles closing at that moment over a 50 ms latency budget. Startup objects live for
    the whole run anyway, so nothing that could be freed is kept."""
    gc.collect()
    gc.freeze()


def run(flow: Dataflow, opts: RunOptions) -> None:
    """Execute `flow` in this process (blocks until it ends)."""
    rec = recovery_config(opts)
    settle_heap()
    epoch = timedelta(seconds=opts.snapshot_interval_s)
    cli_main(flow, workers_per_process=opts.workers, process_id=opts.process_id,
             addresses=list(opts.addresses) or None, epoch_interval=epoch,
             recovery_config=rec)
