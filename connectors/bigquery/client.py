"""BigQuery clients from the environment: project, credentials, emulator endpoints.

Credentials come only from the environment: application default credentials, or the
service-account key file that GOOGLE_APPLICATION_CREDENTIALS names (google.auth.default
reads both). streaming.yaml never holds credentials, and nothing here logs them: a log
line names the credential type, never a key, token or file content.

An emulator is used when BIGQUERY_EMULATOR_HOST (REST, e.g. http://127.0.0.1:9050) or
BIGQUERY_STORAGE_EMULATOR_HOST (Storage API gRPC host:port, plain text) is set; then the
clients use anonymous credentials and never reach Google.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EMULATOR_ENV = "BIGQUERY_EMULATOR_HOST"
STORAGE_EMULATOR_ENV = "BIGQUERY_STORAGE_EMULATOR_HOST"
PROJECT_ENV = "GOOGLE_CLOUD_PROJECT"
SCOPES = ("https://www.googleapis.com/auth/bigquery",
          "https://www.googleapis.com/auth/cloud-platform")

log = logging.getLogger(__name__)


class BigQuerySetupError(ValueError):
    """The project, credentials or endpoints cannot be determined."""


@dataclass(frozen=True)
class Endpoints:
    """Emulator endpoints from the environment; both None means Google's production API."""

    rest: str | None
    grpc: str | None

    @property
    def emulated(self) -> bool:
        return self.rest is not None or self.grpc is not None


def emulator_endpoints(env: Mapping[str, str] | None = None) -> Endpoints:
    """Read BIGQUERY_EMULATOR_HOST / BIGQUERY_STORAGE_EMULATOR_HOST (empty counts as unset)."""
    env = os.environ if env is None else env
    rest = (env.get(EMULATOR_ENV) or "").strip() or None
    grpc_host = (env.get(STORAGE_EMULATOR_ENV) or "").strip() or None
    if rest is not None and "://" not in rest:
        rest = "http://" + rest
    if grpc_host is not None:
        grpc_host = grpc_host.split("://", 1)[-1].rstrip("/")
        if ":" not in grpc_host:
            raise BigQuerySetupError(
                f"{STORAGE_EMULATOR_ENV} must be host:port, got {grpc_host!r}")
    return Endpoints(rest=rest, grpc=grpc_host)


def resolve_project(config_project: str | None, credentials_project: str | None = None,
                    env: Mapping[str, str] | None = None, emulated: bool = False) -> str:
    """GOOGLE_CLOUD_PROJECT, else `persist.bigquery.project`, else the credentials' project.

    On an emulator with none of these, the emulator's default project `test-project`.
    """
    env = os.environ if env is None else env
    project = ((env.get(PROJECT_ENV) or "").strip() or config_project or credentials_project)
    if not project and emulated:
        project = "test-project"
    if not project:
        raise BigQuerySetupError(
            f"no Google Cloud project: set {PROJECT_ENV} or persist.bigquery.project in "
            "streaming.yaml")
    return project


def describe_credentials(credentials: Any) -> str:
    """A log-safe name for a credentials object: its type only."""
    return type(credentials).__name__


def load_credentials(endpoints: Endpoints) -> tuple[Any, str | None]:
    """(credentials, their project) from the environment; anonymous on an emulator."""
    if endpoints.emulated:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials(), None  # type: ignore[no-untyped-call]
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, project = google.auth.default(scopes=list(SCOPES))
    except DefaultCredentialsError as e:
        # The message names where google.auth looked, never a key.
        raise BigQuerySetupError(
            "no Google credentials: run `gcloud auth application-default login` or set "
            f"GOOGLE_APPLICATION_CREDENTIALS to a service-account key file ({e})") from None
    return credentials, project


@dataclass
class BigQueryClients:
    """The REST client (tables, queries, insert_all) and the Storage Write client."""

    project: str
    bq: Any  # google.cloud.bigquery.Client
    write: Any | None  # google.cloud.bigquery_storage_v1.BigQueryWriteClient
    endpoints: Endpoints

    def close(self) -> None:
        """Close both clients' transports."""
        try:
            self.bq.close()
        finally:
            if self.write is not None:
                self.write.transport.close()


def make_clients(config_project: str | None, location: str | None = None,
                 need_storage_write: bool = True,
                 env: Mapping[str, str] | None = None) -> BigQueryClients:
    """Build the clients for the configured project from the environment."""
    from google.api_core.client_options import ClientOptions
    from google.cloud import bigquery

    endpoints = emulator_endpoints(env)
    if need_storage_write and endpoints.rest and not endpoints.grpc:
        raise BigQuerySetupError(
            f"{EMULATOR_ENV} is set but {STORAGE_EMULATOR_ENV} is not: the Storage Write API "
            "would go to Google with anonymous credentials. Set it to the emulator's gRPC "
            "host:port, or use persist.bigquery.write_api: insert_all")
    credentials, cred_project = load_credentials(endpoints)
    project = resolve_project(config_project, cred_project, env, endpoints.emulated)
    options = ClientOptions(api_endpoint=endpoints.rest) if endpoints.rest else None
    bq = bigquery.Client(project=project, credentials=credentials, location=location,
                         client_options=options)
    write = None
    if need_storage_write:
        write = make_write_client(endpoints, credentials)
    log.info("BigQuery clients: project=%s credentials=%s rest=%s storage=%s", project,
             describe_credentials(credentials), endpoints.rest or "googleapis",
             endpoints.grpc or "googleapis")
    return BigQueryClients(project=project, bq=bq, write=write, endpoints=endpoints)


# A restarted emulator or a brief network cut should be retried within seconds, not after
# gRPC's default reconnect backoff (up to 120 s).
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.max_send_message_length", 32 << 20),
    ("grpc.max_receive_message_length", 32 << 20),
    ("grpc.keepalive_time_ms", 60_000),
]


def make_write_client(endpoints: Endpoints, credentials: Any) -> Any:
    """A BigQueryWriteClient: a plain-text channel to the emulator, or TLS to Google."""
    import grpc
    from google.cloud.bigquery_storage_v1 import BigQueryWriteClient
    from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
        BigQueryWriteGrpcTransport,
    )

    if endpoints.grpc:
        channel = grpc.insecure_channel(endpoints.grpc, options=_CHANNEL_OPTIONS)
        return BigQueryWriteClient(transport=BigQueryWriteGrpcTransport(channel=channel))
    channel = BigQueryWriteGrpcTransport.create_channel(
        "bigquerystorage.googleapis.com:443", credentials=credentials, scopes=list(SCOPES),
        options=_CHANNEL_OPTIONS)
    return BigQueryWriteClient(transport=BigQueryWriteGrpcTransport(channel=channel))
