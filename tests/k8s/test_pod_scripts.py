"""The pod init steps (k8s/scripts) run as the StatefulSet runs them, and what Bytewax makes of
the result: process ids and addresses through bytewax.run's own argument parsing, and a
recovery store laid out by the init step that resumes, and survives a scale-up, for real."""

from __future__ import annotations

import ast
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.k8s import manifests as m

SH = shutil.which("sh") or "sh"
pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")


def run_script(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ["PATH"], "PYTHON": sys.executable, **env}
    return subprocess.run([SH, str(m.SCRIPTS / name)], env=full, capture_output=True, text=True,
                          timeout=60)


def pod_env(c: dict[str, Any], pod: str, namespace: str = m.NAMESPACE) -> dict[str, str]:
    """A container's environment in pod `pod`: literal values and downward-API fields."""
    env = m.literal_env(c)
    for e in c.get("env", []):
        path = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if path == "metadata.name":
            env[e["name"]] = pod
        elif path == "metadata.namespace":
            env[e["name"]] = namespace
    return env


def test_script_paths_in_the_manifest_are_the_ones_the_image_ships() -> None:
    sts = m.statefulset()
    for init, script in (("hostfile", "write-hostfile.sh"), ("recovery-init", "init-recovery.sh")):
        c = m.container(sts, init, init=True)
        assert c["command"] == ["sh", f"/app/{script}"]
        assert (m.SCRIPTS / script).is_file()


def test_replicas_hostfile_and_bytewax_process_addressing(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import bytewax.run

    sts = m.statefulset()
    replicas = sts["spec"]["replicas"]
    name = sts["metadata"]["name"]
    headless = m.find("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    # the processes must resolve each other before any of them is ready
    assert headless["spec"]["publishNotReadyAddresses"] is True
    init = m.container(sts, "hostfile", init=True)
    flow = m.container(sts, "flow")
    init_env, flow_env = m.literal_env(init), m.literal_env(flow)
    assert int(init_env["BYTEWAX_REPLICAS"]) == replicas
    assert init_env["BYTEWAX_STATEFULSET_NAME"] == flow_env["BYTEWAX_STATEFULSET_NAME"] == name
    assert init_env["BYTEWAX_SERVICE_NAME"] == headless["metadata"]["name"]
    port = int(init_env["BYTEWAX_PORT"])
    assert port == m.port_number(flow, "bytewax")
    assert [p["port"] for p in headless["spec"]["ports"]] == [port]
    hostfile = init_env["BYTEWAX_HOSTFILE_PATH"]
    assert flow_env["BYTEWAX_HOSTFILE_PATH"] == hostfile
    assert m.mount_path(init, "hostfile") == m.mount_path(flow, "hostfile") == \
        str(Path(hostfile).parent)
    assert m.field_ref(flow, "BYTEWAX_POD_NAME") == "metadata.name"

    args = flow["args"]
    seen = []
    for k in range(replicas):
        pod = f"{name}-{k}"
        env = pod_env(init, pod)
        local = tmp_path / pod / "hostfile.txt"
        local.parent.mkdir()
        env["BYTEWAX_HOSTFILE_PATH"] = str(local)
        done = run_script("write-hostfile.sh", env)
        assert done.returncode == 0, done.stderr
        lines = local.read_text().splitlines()
        assert lines == [f"{name}-{i}.{headless['metadata']['name']}.{m.NAMESPACE}"
                         f".svc.cluster.local:{port}" for i in range(replicas)]
        # the flow container's environment and arguments, parsed by bytewax.run itself
        for var in [v for v in os.environ if v.startswith("BYTEWAX_")]:
            monkeypatch.delenv(var)
        for var, value in pod_env(flow, pod).items():
            if var.startswith("BYTEWAX_"):
                monkeypatch.setenv(var, value)
        monkeypatch.setenv("BYTEWAX_HOSTFILE_PATH", str(local))
        monkeypatch.setattr(sys, "argv", ["bytewax.run", *args[3:]])
        parsed = bytewax.run._parse_args()
        assert parsed.process_id == k
        assert parsed.addresses.split(";") == lines
        assert parsed.workers_per_process == int(flow_env["BYTEWAX_WORKERS_PER_PROCESS"])
        assert str(parsed.recovery_directory) == args[args.index("-r") + 1]
        assert parsed.snapshot_interval == timedelta(seconds=int(args[args.index("-s") + 1]))
        assert parsed.backup_interval == timedelta(seconds=int(args[args.index("-b") + 1]))
        seen.append(parsed.addresses)
    assert len(set(seen)) == 1, "every process must get the same address list"


def test_hostfile_script_rejects_a_bad_replica_count(tmp_path: Path) -> None:
    env = {"BYTEWAX_HOSTFILE_PATH": str(tmp_path / "h"), "BYTEWAX_STATEFULSET_NAME": "x",
           "POD_NAMESPACE": "ns", "BYTEWAX_REPLICAS": "two"}
    done = run_script("write-hostfile.sh", env)
    assert done.returncode == 2 and "BYTEWAX_REPLICAS" in done.stderr
    assert not (tmp_path / "h").exists()


def recovery_settings() -> tuple[int, int, int, dict[str, Any]]:
    sts = m.statefulset()
    init = m.container(sts, "recovery-init", init=True)
    env = m.literal_env(init)
    parts, init_replicas = int(env["BYTEWAX_RECOVERY_PARTS"]), int(
        env["BYTEWAX_RECOVERY_INIT_REPLICAS"])
    return parts, init_replicas, sts["spec"]["replicas"], init


def init_pods(tmp_path: Path, pods: range, **extra: str) -> list[Path]:
    _, _, _, init = recovery_settings()
    name = m.statefulset()["metadata"]["name"]
    dirs = []
    for k in pods:
        env = pod_env(init, f"{name}-{k}")
        d = tmp_path / f"{name}-{k}" / "recovery"
        env.update(BYTEWAX_RECOVERY_DIRECTORY=str(d), **extra)
        done = run_script("init-recovery.sh", env)
        assert done.returncode == 0, done.stdout + done.stderr
        dirs.append(d)
    return dirs


def parts_in(d: Path) -> set[str]:
    return {p.name for p in d.glob("part-*.sqlite3")} if d.exists() else set()


def test_recovery_settings_fit_the_replica_count() -> None:
    parts, init_replicas, replicas, _ = recovery_settings()
    # every pod that holds partitions exists; every pod of the first deployment holds some
    assert 1 <= init_replicas <= replicas
    assert parts >= init_replicas


def test_init_spreads_each_partition_to_exactly_one_pod(tmp_path: Path) -> None:
    parts, init_replicas, replicas, _ = recovery_settings()
    dirs = init_pods(tmp_path, range(init_replicas + 1))  # one pod more: a later scale-up
    held = [parts_in(d) for d in dirs]
    assert set().union(*held) == {f"part-{i}.sqlite3" for i in range(parts)}
    assert sum(len(h) for h in held) == parts, "a partition was created twice"
    assert held[-1] == set(), "a pod added later must hold no partition"
    # idempotent: a restarted pod keeps its store as it is
    before = {p: p.stat().st_mtime_ns for d in dirs for p in d.glob("part-*")}
    init_pods(tmp_path, range(init_replicas + 1))
    assert {p: p.stat().st_mtime_ns for d in dirs for p in d.glob("part-*")} == before
    assert not list(tmp_path.glob("*/recovery/.init-*")), "temporary files left behind"


def test_init_refuses_a_changed_layout(tmp_path: Path) -> None:
    parts, init_replicas, _, init = recovery_settings()
    (d,) = init_pods(tmp_path, range(1))
    env = pod_env(init, "market-data-0")
    env.update(BYTEWAX_RECOVERY_DIRECTORY=str(d),
               BYTEWAX_RECOVERY_INIT_REPLICAS=str(init_replicas + 1))
    done = run_script("init-recovery.sh", env)
    assert done.returncode == 1 and "reset the store" in done.stderr


def test_init_on_one_shared_volume_creates_every_partition_once(tmp_path: Path) -> None:
    # waxctl --recovery-single-volume: every pod runs the chart's entrypoint-recovery.sh (this
    # script) on the same directory, with BYTEWAX_RECOVERY_PARTS = the process count.
    shared = tmp_path / "shared"
    for k in range(3):
        done = run_script("init-recovery.sh", {"BYTEWAX_RECOVERY_DIRECTORY": str(shared),
                                               "BYTEWAX_RECOVERY_PARTS": "3",
                                               "BYTEWAX_POD_NAME": f"bytewax-{k}"})
        assert done.returncode == 0, done.stderr
    assert parts_in(shared) == {f"part-{i}.sqlite3" for i in range(3)}


COUNTER_FLOW = textwrap.dedent("""
    import os

    import bytewax.operators as op
    from bytewax.connectors.stdio import StdOutSink
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource

    N = int(os.environ["N_ITEMS"])
    flow = Dataflow("k8s_recovery_layout")
    items = op.input("inp", flow, TestingSource([(f"k{i % 8}", 1) for i in range(N)]))

    def add(total, v):
        total = (total or 0) + v
        return total, total

    op.output("out", op.stateful_map("sum", items, add), StdOutSink())
""")


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run_cluster(flow_dir: Path, dirs: list[Path], n_items: int) -> list[tuple[str, int]]:
    """Runs the counter flow as len(dirs) processes on loopback, process i with recovery
    directory dirs[i], as the StatefulSet runs them (-i/-a, -r/-s/-b)."""
    addresses = ";".join(f"127.0.0.1:{p}" for p in free_ports(len(dirs)))
    env = {**os.environ, "N_ITEMS": str(n_items)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "counter_flow", "-i", str(i), "-a", addresses,
         "-r", str(d), "-s", "1", "-b", "0"],
        cwd=flow_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, d in enumerate(dirs)]
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=60)
            assert p.returncode == 0, stderr[-2000:]
            out += [ast.literal_eval(line) for line in stdout.splitlines() if line.startswith("(")]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return sorted(out)


def test_store_laid_out_by_the_init_step_resumes_and_survives_a_scale_up(tmp_path: Path) -> None:
    parts, init_replicas, _, _ = recovery_settings()
    flow_dir = tmp_path / "flow"
    flow_dir.mkdir()
    (flow_dir / "counter_flow.py").write_text(COUNTER_FLOW)
    dirs = init_pods(tmp_path, range(init_replicas + 1))
    first = run_cluster(flow_dir, dirs[:init_replicas], 40)
    assert first == sorted((f"k{k}", n) for k in range(8) for n in range(1, 6))
    # the next execution has one process more (its volume holds no partition): the state and
    # the input position come back from the partitions of the other pods
    second = run_cluster(flow_dir, dirs, 80)
    assert second == sorted((f"k{k}", n) for k in range(8) for n in range(6, 11))
