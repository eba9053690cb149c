"""Shared fixtures: the real-data folder, a real Redis server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer, external_redis_url

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def shared_file(relative: str) -> Path:
    """A file under ../shared/data; skips (outside CI) or fails (in CI) when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        msg = f"real recorded data {path} is absent (../shared/data is not beside this checkout)"
        if IN_CI:
            pytest.fail(msg + " and CI must have it")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL if set, else a redis-server started for this test session on a free port."""
    url = external_redis_url()
    if url:
        yield url
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to one test, so tests never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:10]}"
