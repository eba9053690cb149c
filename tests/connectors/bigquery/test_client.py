"""Project, endpoints and credentials from the environment; credentials never in a log."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from connectors.bigquery.client import (
    BigQuerySetupError,
    emulator_endpoints,
    make_clients,
    resolve_project,
)
from connectors.tables import TICK_TABLES
from dataflows.config import ConfigError, config_from_dict
from tests.connectors.bigquery.conftest import fast_config
from tests.connectors.bigquery.rows import tick_rows


def test_emulator_endpoints_from_env() -> None:
    e = emulator_endpoints({"BIGQUERY_EMULATOR_HOST": "127.0.0.1:9050",
                            "BIGQUERY_STORAGE_EMULATOR_HOST": "127.0.0.1:9060"})
    assert (e.rest, e.grpc, e.emulated) == ("http://127.0.0.1:9050", "127.0.0.1:9060", True)
    e = emulator_endpoints({"BIGQUERY_EMULATOR_HOST": "https://bq.local:1",
                            "BIGQUERY_STORAGE_EMULATOR_HOST": "http://h:2/"})
    assert (e.rest, e.grpc) == ("https://bq.local:1", "h:2")
    assert not emulator_endpoints({"BIGQUERY_EMULATOR_HOST": " "}).emulated
    with pytest.raises(BigQuerySetupError, match="host:port"):
        emulator_endpoints({"BIGQUERY_STORAGE_EMULATOR_HOST": "localhost"})


def test_project_precedence() -> None:
    env = {"GOOGLE_CLOUD_PROJECT": "from-env-1"}
    assert resolve_project("from-config", "from-creds", env) == "from-env-1"
    assert resolve_project("from-config", "from-creds", {}) == "from-config"
    assert resolve_project(None, "from-creds", {}) == "from-creds"
    assert resolve_project(None, None, {}, emulated=True) == "test-project"
    with pytest.raises(BigQuerySetupError, match="GOOGLE_CLOUD_PROJECT"):
        resolve_project(None, None, {})


def test_storage_write_refuses_a_rest_only_emulator() -> None:
    """Without a Storage emulator, appends would go to Google with anonymous credentials."""
    env = {"BIGQUERY_EMULATOR_HOST": "127.0.0.1:9050"}
    with pytest.raises(BigQuerySetupError, match="BIGQUERY_STORAGE_EMULATOR_HOST"):
        make_clients(None, env=env)
    clients = make_clients(None, need_storage_write=False, env=env)
    assert clients.write is None and clients.project == "test-project"
    clients.close()


def test_streaming_yaml_cannot_hold_credentials() -> None:
    for key in ("credentials", "credentials_file", "key_file"):
        with pytest.raises(ConfigError, match=f"persist.bigquery.{key}: unknown key"):
            config_from_dict({"persist": {"bigquery": {key: "/secret.json"}}})


def _service_account_key(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {
        "type": "service_account", "project_id": "key-file-project",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": pem, "client_email": "writer@key-file-project.iam.gserviceaccount.com",
        "client_id": "123456789", "token_uri": "https://oauth2.googleapis.com/token",
    }
    path = tmp_path / "key.json"
    path.write_text(json.dumps(info))
    return path, info


def _secrets(info: dict[str, Any], path: Path) -> list[str]:
    body = [ln for ln in info["private_key"].splitlines() if ln and "-----" not in ln]
    return [info["private_key_id"], *body[:3], path.read_text()[:40]]


def test_key_file_credentials_are_used_and_never_logged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """GOOGLE_APPLICATION_CREDENTIALS is read by google.auth; nothing secret reaches a log."""
    path, info = _service_account_key(tmp_path)
    for var in ("BIGQUERY_EMULATOR_HOST", "BIGQUERY_STORAGE_EMULATOR_HOST",
                "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with caplog.at_level(logging.DEBUG):
        clients = make_clients(None, "US")
    try:
        assert clients.project == "key-file-project"
        creds = clients.bq._credentials
        assert type(creds).__module__ == "google.oauth2.service_account"
        assert creds.service_account_email == info["client_email"]
        assert "credentials=Credentials" in caplog.text
        for secret in _secrets(info, path):
            assert secret not in caplog.text
    finally:
        clients.close()


def test_nothing_secret_logged_while_writing(
        bq_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A full ensure + write at DEBUG with a key file in the environment: on an emulator the
    clients use anonymous credentials, and no log line carries the key."""
    from connectors.bigquery.writer import BigQueryWriter

    path, info = _service_account_key(tmp_path)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    tdef = TICK_TABLES["ticks_liquidations"]
    with caplog.at_level(logging.DEBUG):
        w = BigQueryWriter(fast_config(), live=True)
        assert w.write(tdef, tick_rows(tdef, 3)).written == 3
        w.close()
    assert "credentials=AnonymousCredentials" in caplog.text
    for secret in [*_secrets(info, path), str(path)]:
        assert secret not in caplog.text
        assert secret not in repr(w)
