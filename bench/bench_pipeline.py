"""Core pipeline benchmark: Tardis CSV.gz -> 7 timeframes of candles with features.

    python -m bench.bench_pipeline --trades 2000000 --symbols 50 --scale 10

Generates N trades over 50 symbols (cached under bench/data/), then prints, side by side:
  (a) the parse ceiling: pyarrow's streaming CSV read of the same files, nothing else;
  (b) the end-to-end replay through the Bytewax flow (dataflows.replay) to Parquet, all
      7 timeframes with features;
  (c) the candle and feature steps alone on in-memory Arrow batches;
  (d) references on the same data: a plain-Python per-tick aggregator, and polars computing
      the same 7 timeframes with the same features in batch (from files, and from memory);
and the peak RSS of (b) for N and for scale x N trades. Every stage runs in its own process,
so each peak RSS is that stage's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"
TIMEFRAMES = ("15s", "1m", "5m", "15m", "1h", "4h", "1d")
PERIODS = (5, 10, 20)


def dataset(trades: int, symbols: int, seed: int = 7) -> list[str]:
    """The benchmark's input files (generated once, then reused)."""
    from connectors.tardis.generate import generate_trades

    d = DATA / f"trades_{trades}_{symbols}_s{seed}"
    done = d / ".complete"
    if not done.exists():
        d.mkdir(parents=True, exist_ok=True)
        generate_trades(d, n_symbols=symbols, total_trades=trades, seed=seed)
        done.write_text("ok")
    return sorted(str(p) for p in d.glob("*.csv.gz"))


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: per process image; ru_maxrss would include the peak
    of the parent that spawned it, as Linux carries it across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- stages, each run in a child process --------------------------------------------------------

def stage_parse(paths: list[str]) -> dict:
    from bench.references import pyarrow_parse_ceiling

    t = time.perf_counter()
    rows = pyarrow_parse_ceiling(paths)
    return {"rows": rows, "seconds": time.perf_counter() - t}


def stage_replay(paths: list[str]) -> dict:
    from dataflows.replay import main as replay

    out = tempfile.mkdtemp(prefix="bench-replay-")
    cfg = Path(out) / "streaming.yaml"
    cfg.write_text(f"outputs: {{dead_letter_path: {out}/dead_letter}}\n")
    t = time.perf_counter()
    code = replay(["--config", str(cfg), "--quiet", "--output", f"{out}/parquet",
                   *[a for p in paths for a in ("--input", p)]])
    seconds = time.perf_counter() - t
    if code != 0:
        raise SystemExit(f"replay failed with exit code {code}")
    from operators import metrics

    return {"rows": int(metrics.ROWS_IN.value()), "candles": int(metrics.CANDLES_OUT.value()),
            "seconds": seconds}


def _load_batches(paths: list[str]) -> list:
    from connectors.tardis import files
    from connectors.tardis.files import TardisFileSource, poll

    files.IN_FLIGHT.limit = 1 << 62  # this stage keeps every batch in memory on purpose
    src = TardisFileSource(paths)
    return [item for key in src.list_parts()
            for items in poll(src.build_part("bench", key, None)) for item in items]


def stage_steps(paths: list[str]) -> dict:
    """The candle and feature steps' logic on in-memory tick batches (no Bytewax runtime)."""
    from dataflows.config import parse_duration_us
    from operators.candles.builder import ClosePolicy
    from operators.candles.step import CandleLogic
    from operators.features_step import FeatureLogic
    from operators.messages import CandleBatch, TickBatch

    items = [i for i in _load_batches(paths) if isinstance(i, TickBatch)]
    rows = sum(len(i) for i in items)
    tfs = [parse_duration_us(t) for t in TIMEFRAMES]
    t = time.perf_counter()
    candle_logic: dict[str, CandleLogic] = {}
    feature_logic: dict[str, FeatureLogic] = {}
    n_candles = 0

    def features(key: str, out: object) -> int:
        batches = [c for c in out if isinstance(c, CandleBatch)]
        if key not in feature_logic:
            feature_logic[key] = FeatureLogic(PERIODS)
        done, _ = feature_logic[key].on_batch(batches)
        return sum(len(c) for c in done)

    for item in items:
        logic = candle_logic.get(item.key)
        if logic is None:
            logic = candle_logic[item.key] = CandleLogic(tfs, ClosePolicy())
        out, _ = logic.on_batch([item])
        n_candles += features(item.key, out)
    for key, logic in candle_logic.items():
        out, _ = logic.on_eof()
        n_candles += features(key, out)
    return {"rows": rows, "candles": n_candles, "seconds": time.perf_counter() - t}


def stage_python(paths: list[str]) -> dict:
    from bench.references import python_per_tick_candles
    from dataflows.config import parse_duration_us

    t = time.perf_counter()
    candles = python_per_tick_candles(paths, [parse_duration_us(x) for x in TIMEFRAMES])
    return {"candles": len(candles), "seconds": time.perf_counter() - t}


def stage_polars_files(paths: list[str]) -> dict:
    from bench.references import polars_candles
    from dataflows.config import parse_duration_us

    t = time.perf_counter()
    out = polars_candles(paths, [parse_duration_us(x) for x in TIMEFRAMES], PERIODS)
    return {"candles": sum(len(f) for f in out.values()), "seconds": time.perf_counter() - t}


def stage_polars_memory(paths: list[str]) -> dict:
    import pyarrow as pa

    from bench.references import polars_candles_from_trades
    from dataflows.config import parse_duration_us
    from operators.messages import TickBatch

    batches = [i.batch for i in _load_batches(paths) if isinstance(i, TickBatch)]
    table = pa.Table.from_batches(batches).combine_chunks()
    t = time.perf_counter()
    out = polars_candles_from_trades(table, [parse_duration_us(x) for x in TIMEFRAMES], PERIODS)
    return {"rows": table.num_rows, "candles": sum(len(f) for f in out.values()),
            "seconds": time.perf_counter() - t}


STAGES = {"parse": stage_parse, "replay": stage_replay, "steps": stage_steps,
          "python": stage_python, "polars_files": stage_polars_files,
          "polars_memory": stage_polars_memory}


def run_stage(stage: str, paths: list[str]) -> dict:
    """Run one stage in a fresh process; returns its figures and its own peak RSS."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(paths, f)
    proc = subprocess.run([sys.executable, "-m", "bench.bench_pipeline", "--stage", stage,
                           "--paths-file", f.name], cwd=ROOT, capture_output=True, text=True)
    os.unlink(f.name)
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python "
            f"{platform.python_version()}, {platform.system()} {platform.release()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trades", type=int, default=2_000_000, help="N (default 2,000,000)")
    p.add_argument("--symbols", type=int, default=50)
    p.add_argument("--scale", type=int, default=10, help="RSS is also measured at scale x N")
    p.add_argument("--skip-python", action="store_true", help="skip the slow per-tick reference")
    p.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    p.add_argument("--paths-file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        paths = json.loads(Path(args.paths_file).read_text())
        result = STAGES[args.stage](paths)
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return

    n = args.trades
    print(f"machine: {machine()}", flush=True)
    print(f"generating {n:,} trades over {args.symbols} symbols (cached in {DATA})", flush=True)
    paths = dataset(n, args.symbols)
    size_mb = sum(Path(x).stat().st_size for x in paths) / 2**20
    results = {}
    order = ["parse", "replay", "steps", "polars_files", "polars_memory"]
    if not args.skip_python:
        order.append("python")
    for stage in order:
        print(f"running {stage} ...", flush=True)
        results[stage] = run_stage(stage, paths)
    big = None
    if args.scale > 1:
        print(f"generating {n * args.scale:,} trades for the RSS check ...", flush=True)
        big_paths = dataset(n * args.scale, args.symbols)
        print("running replay at scale ...", flush=True)
        big = run_stage("replay", big_paths)

    def rate(r: dict) -> str:
        return f"{n / r['seconds']:,.0f}"

    a, b, c = results["parse"], results["replay"], results["steps"]
    pm, pf = results["polars_memory"], results["polars_files"]
    lines = [
        f"N = {n:,} trades, {args.symbols} symbols, {len(paths)} files, {size_mb:.1f} MiB "
        f"gzip; 7 timeframes ({', '.join(TIMEFRAMES)}), features periods {PERIODS}",
        "",
        "| stage | seconds | trades/s | peak RSS MB | notes |",
        "|---|---:|---:|---:|---|",
        f"| (a) pyarrow streaming CSV read (parse ceiling) | {a['seconds']:.2f} | {rate(a)} | "
        f"{a['peak_rss_mb']:.0f} | rows {a['rows']:,} |",
        f"| (b) replay through the Bytewax flow to Parquet | {b['seconds']:.2f} | {rate(b)} | "
        f"{b['peak_rss_mb']:.0f} | {b['candles']:,} candles; (b)/(a) = "
        f"{a['seconds'] / b['seconds']:.2f}x the parse rate (target >= 0.6) |",
        f"| (c) candle + feature steps on in-memory Arrow | {c['seconds']:.2f} | {rate(c)} | "
        f"{c['peak_rss_mb']:.0f} | {c['candles']:,} candles; {pm['seconds'] / c['seconds']:.2f}x "
        f"polars in memory (target >= 1) |",
        f"| (d) polars, same candles + features, in memory | {pm['seconds']:.2f} | {rate(pm)} | "
        f"{pm['peak_rss_mb']:.0f} | {pm['candles']:,} candles (non-empty intervals only) |",
        f"| (d) polars, same, from the CSV.gz files | {pf['seconds']:.2f} | {rate(pf)} | "
        f"{pf['peak_rss_mb']:.0f} | lazy scan_csv plan |",
    ]
    if "python" in results:
        py = results["python"]
        lines.append(f"| (d) plain-Python per-tick aggregator | {py['seconds']:.2f} | {rate(py)} | "
                     f"{py['peak_rss_mb']:.0f} | OHLCV only, no features |")
    if big is not None:
        lines += ["", f"Peak RSS of (b): {b['peak_rss_mb']:.0f} MB at N, "
                  f"{big['peak_rss_mb']:.0f} MB at {args.scale}xN = {n * args.scale:,} trades "
                  f"({big['seconds']:.1f} s, {n * args.scale / big['seconds']:,.0f} trades/s); "
                  f"difference {big['peak_rss_mb'] - b['peak_rss_mb']:+.0f} MB (target <= +100)"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
