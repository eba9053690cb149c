"""Exactly-once recovery: a replay SIGKILLed at random points and restarted with its recovery
store writes exactly what an uninterrupted run writes, to Parquet and to Redis alike."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis

from connectors.sinks.parquet import read_table
from connectors.tardis.generate import generate_trades
from tests.flows import sigkill_at_random_points

ROOT = Path(__file__).resolve().parents[2]
TABLES = [f"candles_{tf}" for tf in ("15s", "1m", "5m", "15m", "1h", "4h", "1d")]


def _config(path: Path, out: Path, redis_url: str, prefix: str) -> Path:
    path.write_text(json.dumps({
        "mode": "streaming-candles-serve", "modes": ["serve", "persist"],
        "source": {"files": {"chunk_bytes": 65536}},
        "serve": {"transport": "redis", "redis_url": redis_url, "key_prefix": prefix},
        "persist": {"parquet": {"path": str(out), "rows_per_file": 2000}},
        "outputs": {"dead_letter_path": str(out / "dead_letter"),
                    "progress_interval": "0.1s"},
        "recovery": {"snapshot_interval": "0.2s"},
        "monitoring": {"enabled": False},
    }))
    return path


def _replay(config: Path, inputs: list[str], *extra: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "dataflows.replay", "--config", str(config), *extra]
    for f in inputs:
        args += ["--input", f]
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _streams(client: redis.Redis, prefix: str) -> dict[str, list[tuple[bytes, bytes]]]:
    out = {}
    for key in client.scan_iter(match=f"{prefix}:*:stream"):
        name = key.decode().removeprefix(prefix)
        out[name] = [(i, f[b"d"]) for i, f in client.xrange(key)]
    return out


def _tables(out: Path) -> dict[str, pa.Table]:
    return {t: read_table(out, t, dedupe=False) for t in TABLES}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("recovery")
    files = generate_trades(d, symbols=["BTCUSDT", "ETHUSDT", "XRPUSDT", "ADAUSDT"],
                            day="2024-01-15", trades_per_symbol=150_000, seed=21)
    return sorted(str(f) for f in files)


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(
        inputs, tmp_path, redis_url, redis_prefix):
    client = redis.Redis.from_url(redis_url)
    whole_out = tmp_path / "whole"
    whole = _replay(_config(tmp_path / "a.json", whole_out, redis_url, redis_prefix + "a"),
                    inputs, "--quiet")
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err

    out = tmp_path / "killed"
    cfg = _config(tmp_path / "b.json", out, redis_url, redis_prefix + "b")
    store = tmp_path / "store"
    kills = sigkill_at_random_points(
        lambda: _replay(cfg, inputs, "--recovery", str(store)),
        lambda _: out.exists() and any(out.glob("candles_*/*/*.parquet")),  # writing
        random.Random(1234))
    assert kills >= 1, "every run finished before it could be killed: make the input larger"
    final = _replay(cfg, inputs, "--recovery", str(store), "--quiet")
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err

    # Parquet: the same rows, none missing, none doubled (read without deduplication)
    a, b = _tables(whole_out), _tables(out)
    for t in TABLES:
        ta = a[t].drop_columns(["date"]).sort_by("row_key")
        tb = b[t].drop_columns(["date"]).sort_by("row_key")
        assert tb.num_rows == ta.num_rows, t
        assert pc.count_distinct(tb.column("row_key")).as_py() == tb.num_rows, t
        assert tb.column("row_key").equals(ta.column("row_key")), t
        for col in ta.column_names:
            x, y = ta.column(col), tb.column(col)
            if pa.types.is_floating(x.type):
                np.testing.assert_allclose(y.to_numpy(), x.to_numpy(), rtol=1e-12,
                                           err_msg=f"{t}.{col}")
            else:
                assert x.equals(y), f"{t}.{col}"

    # Redis: every stream holds the same entries, in order, each once
    sa, sb = _streams(client, redis_prefix + "a"), _streams(client, redis_prefix + "b")
    assert sa and sorted(sa) == sorted(sb)
    for name in sa:
        assert [i for i, _ in sb[name]] == [i for i, _ in sa[name]], name
        for (_, pa_), (_, pb_) in zip(sa[name], sb[name], strict=True):
            ra, rb = json.loads(pa_), json.loads(pb_)
            assert ra.keys() == rb.keys()
            for k in ra:
                if isinstance(ra[k], float):
                    assert rb[k] == pytest.approx(ra[k], rel=1e-12, nan_ok=True), (name, k)
                else:
                    assert rb[k] == ra[k], (name, k)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_on_loopback_equal_one_process(tmp_path, inputs):
    files = inputs[:3]

    def config(out: Path) -> Path:
        p = tmp_path / f"{out.name}.json"
        p.write_text(json.dumps({
            "persist": {"parquet": {"path": str(out)}},
            "outputs": {"dead_letter_path": str(out / "dead_letter")},
            "monitoring": {"enabled": False}}))
        return p

    one = _replay(config(tmp_path / "one"), files, "--quiet")
    _, err = one.communicate(timeout=300)
    assert one.returncode == 0, err

    addresses = f"127.0.0.1:{_free_port()};127.0.0.1:{_free_port()}"
    cfg = config(tmp_path / "two")
    procs = [_replay(cfg, files, "--quiet", "-i", str(i), "-a", addresses) for i in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    a, b = _tables(tmp_path / "one"), _tables(tmp_path / "two")
    for t in TABLES:
        ta = a[t].drop_columns(["date"]).sort_by("row_key")
        tb = b[t].drop_columns(["date"]).sort_by("row_key")
        assert ta.equals(tb), t
    # the work really was shared: each process wrote Parquet files of its own
    runs = {f.name.split("-")[1] for f in (tmp_path / "two").glob("candles_*/*/*.parquet")}
    assert len(runs) == 2
