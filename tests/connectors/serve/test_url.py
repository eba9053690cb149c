"""Redis URLs: parsing, REDIS_URL override, and the password never shown."""

from __future__ import annotations

import pytest

from connectors.serve.url import (
    DEFAULT_REDIS_URL,
    Redactor,
    parse_redis_url,
    redact_url,
    resolve_redis_url,
)

SECRET = "s3cr#t:p@ss"
ENCODED = "s3cr%23t%3Ap%40ss"


def test_rediss_url_with_user_password_and_db() -> None:
    t = parse_redis_url(f"rediss://svc:{ENCODED}@redis.internal:6380/3?ssl_ca_certs=/ca.pem")
    assert (t.scheme, t.host, t.port, t.db, t.username, t.password, t.tls) == (
        "rediss", "redis.internal", 6380, 3, "svc", SECRET, True)
    assert SECRET not in repr(t) and ENCODED not in repr(t) and ENCODED not in str(t)
    assert t.redacted == "rediss://svc:***@redis.internal:6380/3?ssl_ca_certs=/ca.pem"


def test_plain_url_defaults() -> None:
    t = parse_redis_url("redis://127.0.0.1")
    assert (t.host, t.port, t.db, t.password, t.tls) == ("127.0.0.1", 6379, 0, None, False)
    assert parse_redis_url("redis://h:1/0?db=5").db == 5
    u = parse_redis_url("unix:///run/redis.sock?db=2")
    assert (u.scheme, u.path, u.db) == ("unix", "/run/redis.sock", 2)


@pytest.mark.parametrize("url", [
    f"http://:{ENCODED}@host:6379/0", f"redis://:{ENCODED}@host:notaport/0",
    f"redis://:{ENCODED}@host:6379/x", f"redis://:{ENCODED}@:6379/0", "",
])
def test_invalid_urls_raise_without_the_password(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_redis_url(url)
    assert SECRET not in str(info.value) and ENCODED not in str(info.value)


@pytest.mark.parametrize(("url", "shown"), [
    (f"redis://:{ENCODED}@h:1/0", "redis://***@h:1/0"),
    (f"redis://user:{ENCODED}@h:1/0", "redis://user:***@h:1/0"),
    (f"redis://{ENCODED}@h:1/0", "redis://***@h:1/0"),
    (f"redis://h:1/0?password={ENCODED}&db=1", "redis://h:1/0?password=***&db=1"),
    ("redis://h:1/0", "redis://h:1/0"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redactor_masks_raw_and_percent_encoded_forms() -> None:
    r = parse_redis_url(f"redis://:{ENCODED}@h:1/0").redactor()
    text = f"failed with {SECRET} / {ENCODED}"
    assert r(text) == "failed with *** / ***"
    assert SECRET not in repr(r)
    assert Redactor([])("nothing") == "nothing"


def test_env_redis_url_overrides_the_configured_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert resolve_redis_url("redis://configured:6379/1") == "redis://configured:6379/1"
    assert resolve_redis_url(None) == DEFAULT_REDIS_URL
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/2")
    assert resolve_redis_url("redis://configured:6379/1") == "redis://from-env:6379/2"
