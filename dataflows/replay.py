"""Replay Tardis files through the main flow without editing streaming.yaml.

    python -m dataflows.replay --config streaming.yaml --input 'data/*.csv.gz' --output out/
    python -m dataflows.replay --input 'x_trades_*.csv.gz' --output candles.jsonl   # JSON lines
    python -m dataflows.replay --input 'x_trades_*.csv.gz' --output -              # stdout

`--output` is a directory (Parquet tables), a `.jsonl` file or `-` (JSON lines). With
`--recovery DIR` (or streaming.yaml `recovery.directory`) a killed replay restarted with the
same arguments resumes from its last snapshot. The flow is
the one `dataflows.main` builds for the same mode; progress (files, rows, rows/s) goes to
stderr every `outputs.progress_interval`, and a one-line summary ends the run.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from connectors.monitoring import stop_monitoring
from connectors.tardis.naming import InputError, expand_inputs
from dataflows.config import MODES, ConfigError, load_config
from dataflows.main import build_flow, start_health_endpoint
from dataflows.plan import plan_run, with_recovery
from dataflows.runner import add_run_arguments, options_from, run
from operators import metrics


@dataclass(frozen=True)
class Summary:
    rows_in: int
    candles_out: int
    late: int
    rejected: int
    files_done: int
    seconds: float

    def line(self) -> str:
        rate = self.rows_in / self.seconds if self.seconds > 0 else 0.0
        return (f"replay done: rows in {self.rows_in:,}, candles out {self.candles_out:,}, "
                f"late {self.late:,}, rejected {self.rejected:,}, files {self.files_done:,}, "
                f"{self.seconds:.2f} s ({rate:,.0f} rows/s)")


def current_summary(started: float) -> Summary:
    return Summary(
        rows_in=int(metrics.ROWS_IN.value()),
        candles_out=int(metrics.CANDLES_OUT.value()),
        late=int(metrics.LATE.value()),
        rejected=int(metrics.REJECTED.value()),
        files_done=int(metrics.FILES_DONE.value()),
        seconds=time.monotonic() - started,
    )


class Progress(threading.Thread):
    """Prints files, rows and rows/s to stderr at a fixed interval until stopped."""

    def __init__(self, interval_s: float, total_files: int, started: float) -> None:
        super().__init__(daemon=True, name="replay-progress")
        self.interval_s = interval_s
        self.total_files = total_files
        self.started = started
        self._stop_event = threading.Event()

    def run(self) -> None:
        last_rows, last_t = 0, self.started
        while not self._stop_event.wait(self.interval_s):
            s = current_summary(self.started)
            now = time.monotonic()
            rate = (s.rows_in - last_rows) / max(now - last_t, 1e-9)
            last_rows, last_t = s.rows_in, now
            print(f"progress: files {s.files_done}/{self.total_files}, rows {s.rows_in:,} "
                  f"({rate:,.0f} rows/s), candles {s.candles_out:,}, late {s.late:,}, "
                  f"rejected {s.rejected:,}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self._stop_event.set()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dataflows.replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="streaming.yaml (default: $STREAMING_CONFIG or "
                   "./streaming.yaml)")
    p.add_argument("--input", action="append", required=True, metavar="GLOB",
                   help="Tardis CSV files (globs); repeat for more")
    p.add_argument("--output", help="directory (Parquet), FILE.jsonl or - (JSON lines); "
                   "default: the mode's configured outputs")
    p.add_argument("--mode", choices=MODES, help="default: the config's mode")
    add_run_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines, summary only")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config)
        opts = options_from(args, cfg)
        plan = with_recovery(plan_run(cfg, mode=args.mode, inputs=args.input,
                                      output=args.output), opts.recovery_dir)
        flow = build_flow(cfg, plan, flow_id="replay")
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics.reset_all()
    start_health_endpoint(cfg)
    started = time.monotonic()
    progress = None
    if not args.quiet:
        total = len(expand_inputs(plan.inputs))
        progress = Progress(cfg.outputs.progress_interval / 1e6, total, started)
        progress.start()
    try:
        run(flow, opts)
    except Exception as e:  # bytewax wraps errors raised inside steps
        root = _root_cause(e)
        if isinstance(root, InputError | ConfigError):
            print(f"error: {root}", file=sys.stderr)
            return 2
        raise
    finally:
        if progress is not None:
            progress.stop()
        stop_monitoring()
    print(current_summary(started).line(), file=sys.stderr, flush=True)
    return 0


def _root_cause(e: BaseException) -> BaseException:
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = e.__cause__ or e.__context__
        if nxt is None:
            break
        e = nxt
    return e


if __name__ == "__main__":
    sys.exit(main())
