"""Reading the deployment files of k8s/ and the Dockerfile for the tests of this package."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SCRIPTS = K8S / "scripts"
WAXCTL = K8S / "waxctl"
SECRET_TEMPLATE = K8S / "secrets" / "credentials.template.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
NAMESPACE = "market-data"
CONFIG_KEY = "streaming.yaml"

#: Kinds that live in a namespace (the others here: Namespace).
NAMESPACED = {"ConfigMap", "Secret", "Service", "ServiceAccount", "StatefulSet", "Deployment",
              "PodDisruptionBudget"}


def kustomize_resources() -> list[Path]:
    """The manifests `kubectl apply -k k8s/` applies, in kustomization.yaml's order."""
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [K8S / r for r in kust["resources"]]


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest this project ships (k8s/monitoring/ is not one of them)."""
    top = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    return [*top, SECRET_TEMPLATE, WAXCTL / "tardis-machine.yaml"]


@dataclass(frozen=True)
class Doc:
    path: Path
    index: int
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}#{self.index} {self.kind}/{self.name}"


def load_docs(paths: list[Path] | None = None) -> list[Doc]:
    out = []
    for p in paths if paths is not None else manifest_files():
        for i, body in enumerate(yaml.safe_load_all(p.read_text())):
            if body is not None:
                out.append(Doc(p, i, body))
    return out


def find(kind: str, name: str, docs: list[Doc] | None = None) -> dict[str, Any]:
    matches = [d.body for d in (docs or load_docs()) if d.kind == kind and d.name == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def statefulset() -> dict[str, Any]:
    return find("StatefulSet", "market-data")


def instruments() -> dict[str, Any]:
    return find("Deployment", "market-data-instruments")


def configmap() -> dict[str, Any]:
    return find("ConfigMap", "market-data-config")


def configmap_streaming_yaml() -> dict[str, Any]:
    data = yaml.safe_load(configmap()["data"][CONFIG_KEY])
    assert isinstance(data, dict)
    return data


def secrets() -> dict[str, dict[str, str]]:
    """Secret name -> {key: placeholder value} of the Secret template."""
    out = {}
    for d in load_docs([SECRET_TEMPLATE]):
        assert d.kind == "Secret"
        out[d.name] = dict(d.body.get("stringData") or {})
    return out


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container(workload: dict[str, Any], name: str, *, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    found = [c for c in pod_spec(workload).get(key, []) if c["name"] == name]
    assert len(found) == 1, f"no {key[:-1]} {name!r}"
    return found[0]


def all_containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def literal_env(c: dict[str, Any]) -> dict[str, str]:
    """The container's environment variables that have a literal value."""
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def env_entry(c: dict[str, Any], name: str) -> dict[str, Any]:
    found = [e for e in c.get("env", []) if e["name"] == name]
    assert len(found) == 1, f"{c['name']}: no env {name}"
    return found[0]


def field_ref(c: dict[str, Any], name: str) -> str:
    return str(env_entry(c, name)["valueFrom"]["fieldRef"]["fieldPath"])


def port_number(c: dict[str, Any], port: int | str) -> int:
    """A container port by number or by name."""
    if isinstance(port, int):
        return port
    found = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    assert len(found) == 1, f"{c['name']}: no port named {port!r}"
    return int(found[0])


def mount_path(c: dict[str, Any], volume: str) -> str:
    found = [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] == volume]
    assert len(found) == 1, f"{c['name']}: volume {volume!r} is not mounted once"
    return str(found[0])


def volume(workload: dict[str, Any], name: str) -> dict[str, Any]:
    found = [v for v in pod_spec(workload).get("volumes", []) if v["name"] == name]
    assert len(found) == 1, f"no volume {name!r}"
    return found[0]


def pyproject_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def secret_values() -> list[str]:
    """Every placeholder value of the Secret template, and the values inside its JSON files."""
    out = []
    for data in secrets().values():
        for value in data.values():
            out.append(value)
            try:
                parsed = json.loads(value)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                out.extend(str(v) for v in parsed.values())
    return out


# ------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


@dataclass(frozen=True)
class Instruction:
    stage: int
    name: str
    value: str


def dockerfile_instructions() -> list[Instruction]:
    """The Dockerfile's instructions with their build stage (0 = first FROM), ARG defaults of
    the global scope substituted into FROM lines."""
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(DOCKERFILE))
    global_args: dict[str, str] = {}
    out: list[Instruction] = []
    stage = -1
    for ins in parser.structure:
        name, value = ins["instruction"], ins["value"]
        if name == "ARG" and stage < 0 and "=" in value:
            k, v = value.split("=", 1)
            global_args[k.strip()] = v.strip()
        if name == "FROM":
            stage += 1
            value = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)),
                           value)
        out.append(Instruction(stage, name, value))
    return out


def final_stage() -> list[Instruction]:
    ins = dockerfile_instructions()
    last = max(i.stage for i in ins)
    return [i for i in ins if i.stage == last]


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"not the exec (JSON) form: {value}"
    return [str(x) for x in parsed]


def dockerignore_patterns() -> list[tuple[bool, str]]:
    """(negated, pattern) in file order."""
    out = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:] if neg else line
        out.append((neg, pat.strip("/")))
    return out


def _match(pattern: str, path: str) -> bool:
    # Docker's matcher: Go filepath.Match per path segment, "**" for any number of segments;
    # a pattern also matches everything below a directory it matches.
    pat_parts, path_parts = pattern.split("/"), path.split("/")

    def rec(i: int, j: int) -> bool:
        if i == len(pat_parts):
            return True  # the pattern matched a parent directory (or the path itself)
        if pat_parts[i] == "**":
            return any(rec(i + 1, k) for k in range(j, len(path_parts) + 1))
        if j == len(path_parts):
            return False
        return fnmatch.fnmatchcase(path_parts[j], pat_parts[i]) and rec(i + 1, j + 1)

    return rec(0, 0)


def in_build_context(path: str) -> bool:
    """Whether .dockerignore lets `path` (relative to the repository) into the build context:
    the last matching pattern decides."""
    included = True
    for neg, pat in dockerignore_patterns():
        if _match(pat, path):
            included = neg
    return included
