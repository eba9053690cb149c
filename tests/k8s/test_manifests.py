"""Every manifest of k8s/ against the Kubernetes schemas, and the references between them."""

from __future__ import annotations

import copy
import re
import socket
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.k8s import manifests as m

#: The oldest Kubernetes minor the manifests target, and the newest the validator knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
DOCS = m.load_docs()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation must work offline: any connection attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the manifest validator tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", DOCS, ids=str)
def test_manifest_validates_against_kubernetes_schema(doc: m.Doc, version: str,
                                                      no_network: None) -> None:
    # strict: an unknown or misspelt field is an error, not silently dropped by the API server.
    kubernetes_validate.validate(doc.body, version, strict=True)


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(
        containerPort="9999"), "is not of type 'integer'"),
    (lambda s: s["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"].update(
        paht="/health"), "'paht' was unexpected"),
    (lambda s: s["spec"].pop("selector"), "'selector' is a required property"),
])
def test_validator_rejects_a_broken_statefulset(mutate, message: str, no_network: None) -> None:
    broken = copy.deepcopy(m.statefulset())
    mutate(broken)
    with pytest.raises(kubernetes_validate.ValidationError) as err:
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)
    assert message in err.value.message


def test_kustomization_applies_every_manifest_but_no_secret() -> None:
    kust = yaml.safe_load((m.K8S / "kustomization.yaml").read_text())
    listed = m.kustomize_resources()
    assert all(p.is_file() for p in listed), "kustomization.yaml lists a missing file"
    top_level = [p for p in m.manifest_files() if p.parent == m.K8S]
    assert sorted(listed) == sorted(top_level)
    # `kubectl apply -k` must never overwrite real credentials with the placeholders.
    assert m.SECRET_TEMPLATE not in listed
    assert not any(d.kind == "Secret" for d in m.load_docs(listed))
    assert kust["namespace"] == m.NAMESPACE
    # the image name the manifests use is the one kustomize rewrites, tagged with the version
    (image,) = kust["images"]
    assert image["newTag"] == m.pyproject_version()
    apps = {c["image"] for w in (m.statefulset(), m.instruments()) for c in m.all_containers(w)
            if "tardis-machine" not in c["image"]}
    assert apps == {f"{image['name']}:{m.pyproject_version()}"}


def test_names_are_unique_and_namespaced() -> None:
    seen = set()
    for d in DOCS:
        key = (d.kind, d.name)
        assert key not in seen, f"{d}: defined twice"
        seen.add(key)
        if d.kind in m.NAMESPACED:
            assert d.body["metadata"].get("namespace") == m.NAMESPACE, f"{d}: namespace"
    assert ("Namespace", m.NAMESPACE) in seen


def _pod_labels() -> dict[str, dict[str, str]]:
    out = {}
    for d in DOCS:
        if d.kind in ("StatefulSet", "Deployment"):
            tmpl = d.body["spec"]["template"]["metadata"]["labels"]
            sel = d.body["spec"]["selector"]["matchLabels"]
            assert sel.items() <= tmpl.items(), f"{d}: selector does not match its pods"
            out[f"{d.kind}/{d.name}"] = tmpl
    return out


def test_every_service_and_budget_selects_exactly_one_workload() -> None:
    pods = _pod_labels()
    for d in DOCS:
        if d.kind == "Service":
            sel = d.body["spec"]["selector"]
        elif d.kind == "PodDisruptionBudget":
            sel = d.body["spec"]["selector"]["matchLabels"]
        else:
            continue
        matched = [w for w, labels in pods.items() if sel.items() <= labels.items()]
        assert len(matched) == 1, f"{d}: selects {matched}"


def test_service_target_ports_exist_in_the_selected_pods() -> None:
    pods = {w: d.body for d in DOCS for w in [f"{d.kind}/{d.name}"]
            if d.kind in ("StatefulSet", "Deployment")}
    labels = _pod_labels()
    for d in DOCS:
        if d.kind != "Service":
            continue
        (workload,) = [w for w, lab in labels.items()
                       if d.body["spec"]["selector"].items() <= lab.items()]
        names = {p["name"]: p["containerPort"] for c in m.pod_spec(pods[workload])["containers"]
                 for p in c.get("ports", [])}
        for port in d.body["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in names or target in names.values(), f"{d}: no port {target}"
            number = names.get(target, target)
            assert number == port["port"], f"{d}: {port['name']} maps {port['port']} to {number}"


def test_secret_references_exist() -> None:
    secrets = m.secrets()
    refs = []
    for d in DOCS:
        if d.kind not in ("StatefulSet", "Deployment"):
            continue
        spec = m.pod_spec(d.body)
        for c in m.all_containers(d.body):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append((str(d), ref["name"], ref["key"]))
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    refs.append((str(d), src["secretRef"]["name"], None))
        for v in spec.get("volumes", []):
            if "secret" in v:
                for item in v["secret"].get("items") or [{"key": None}]:
                    refs.append((str(d), v["secret"]["secretName"], item["key"]))
    values = yaml.safe_load((m.WAXCTL / "values.yaml").read_text())
    refs.append(("waxctl values envFromSecret", values["envFromSecret"], None))
    for mount in values["extraSecretMounts"]:
        if "secretName" in mount:
            refs.append(("waxctl values extraSecretMounts", mount["secretName"], None))
    assert refs
    for where, name, key in refs:
        assert name in secrets, f"{where}: Secret {name!r} is not in the template"
        if key is not None:
            assert key in secrets[name], f"{where}: Secret {name!r} has no key {key!r}"


def test_configmap_references_exist() -> None:
    cm = m.configmap()
    refs = []
    for w in (m.statefulset(), m.instruments()):
        for v in m.pod_spec(w).get("volumes", []):
            if "configMap" in v:
                refs.append(v["configMap"])
    values = yaml.safe_load((m.WAXCTL / "values.yaml").read_text())
    for mount in values["extraSecretMounts"]:
        for src in mount.get("projected", {}).get("sources", []):
            if "configMap" in src:
                refs.append(src["configMap"])
    assert len(refs) == 3
    for ref in refs:
        assert ref["name"] == cm["metadata"]["name"]
        assert [i["key"] for i in ref["items"]] == [m.CONFIG_KEY]


def test_secret_template_holds_placeholders_only() -> None:
    docs = m.load_docs([m.SECRET_TEMPLATE])
    assert {d.name for d in docs} == {"market-data-credentials", "market-data-gcp-key"}
    for d in docs:
        assert "data" not in d.body, f"{d}: use stringData placeholders, not encoded data"
        for key, value in d.body["stringData"].items():
            assert "REPLACE_ME" in value, f"{d}: {key} is not a placeholder"
    creds = m.secrets()["market-data-credentials"]
    assert set(creds) == {"TARDIS_API_KEY", "REDIS_URL"}
    url = urlsplit(creds["REDIS_URL"])
    assert url.scheme in ("redis", "rediss") and url.password == "REPLACE_ME_REDIS_PASSWORD"


def _walk(node: object, path: str = "") -> list[tuple[str, object]]:
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _walk(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [kv for i, v in enumerate(node) for kv in _walk(v, f"{path}[{i}]")]
    return [(path, node)]


def test_no_secret_value_in_a_configmap() -> None:
    values = [v for v in m.secret_values() if len(v) >= 6]
    assert values
    for d in DOCS:
        if d.kind != "ConfigMap":
            continue
        text = yaml.safe_dump(d.body)
        for v in values:
            assert v not in text, f"{d}: holds a value of the Secret template"
    cfg = m.configmap_streaming_yaml()
    for path, value in _walk(cfg):
        leaf = path.rsplit(".", 1)[-1].lower()
        assert not any(w in leaf for w in ("password", "secret", "token", "api_key", "apikey",
                                           "private_key", "credentials")), path
        if isinstance(value, str) and "://" in value:
            assert urlsplit(value).password is None, f"{path}: a URL with a password"
            assert urlsplit(value).username is None, f"{path}: a URL with a user"


def test_readme_matches_the_manifests() -> None:
    text = (m.K8S / "README.md").read_text()
    for path in sorted(set(re.findall(r"\bk8s/[\w./-]+\w", text))):
        assert (m.ROOT / path).exists(), f"k8s/README.md names {path}, which does not exist"
    args = m.container(m.statefulset(), "flow")["args"]
    assert " ".join(args) in text, "the README's flow command differs from statefulset.yaml"
    snapshot = args[args.index("-s") + 1]
    assert f"--recovery-snapshot-interval {snapshot}" in text
    assert f"--recovery-backup-interval {args[args.index('-b') + 1]}" in text
    assert f"--image-tag {m.pyproject_version()}" in text
