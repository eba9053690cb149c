"""Redis connection URLs: parsing, validation, and redaction of the password.

The serve sink and `LiveFeatureStream` connect from a `redis://`, `rediss://` (TLS) or
`unix://` URL, as redis-py's `from_url` reads it (TLS options such as
`?ssl_ca_certs=/path/ca.pem` or `?ssl_cert_reqs=none` go in the query string). A URL often
carries a password, so everything this package logs, puts in a repr or in an exception message
goes through `redact_url` or a `Redactor` first: the password never leaves this module in clear.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

#: Environment variable that overrides `serve.redis_url` from streaming.yaml.
REDIS_URL_ENV = "REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SCHEMES = ("redis", "rediss", "unix")
MASK = "***"


def _is_secret_param(name: str) -> bool:
    return "password" in name.lower() or name.lower() in ("token", "auth")


def redact_url(url: str) -> str:
    """`url` with its password (userinfo and `password=` query values) replaced by ***.

    A userinfo without a colon (`redis://secret@host`) is masked too, since people write
    passwords there; `user:password@` keeps the user name.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, hostport = netloc.rsplit("@", 1)
            user, sep, _ = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{hostport}" if sep and user else f"{MASK}@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, MASK if _is_secret_param(k) else v) for k, v in pairs],
                              safe="*/:")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparseable redis url>"


class Redactor:
    """Scrubs known secrets from any text (log lines, error messages) before it is shown."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: list[str] | tuple[str, ...] = ()) -> None:
        found: set[str] = set()
        for s in secrets:
            if s:
                found.update({s, quote(s, safe=""), unquote(s)})
        # longest first, so a secret that contains another is masked whole
        self._secrets = tuple(sorted((s for s in found if s), key=len, reverse=True))

    def __call__(self, text: object) -> str:
        out = str(text)
        for s in self._secrets:
            out = out.replace(s, MASK)
        return out

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"


@dataclass(frozen=True)
class RedisTarget:
    """A validated Redis URL; `repr` and `redacted` never show the password."""

    url: str = field(repr=False)
    scheme: str
    host: str | None
    port: int | None
    db: int
    username: str | None
    password: str | None = field(repr=False)
    path: str | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    @property
    def redacted(self) -> str:
        return redact_url(self.url)

    def redactor(self) -> Redactor:
        """A Redactor for every secret this URL carries."""
        secrets = [self.password or ""]
        parts = urlsplit(self.url)
        secrets += [v for k, v in parse_qsl(parts.query) if _is_secret_param(k)]
        if parts.username and parts.password is None:
            secrets.append(parts.username)   # `redis://secret@host`: masked as a password
        return Redactor(secrets)

    def __repr__(self) -> str:
        return f"RedisTarget({self.redacted})"

    __str__ = __repr__


def parse_redis_url(url: str) -> RedisTarget:
    """Validate a redis://, rediss:// or unix:// URL; the ValueError never shows the password."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("redis_url must be a non-empty string such as redis://host:6379/0")
    url = url.strip()
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"redis_url {shown!r}: not a valid URL (check the port)") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"redis_url {shown!r}: scheme must be one of redis://, rediss:// (TLS) or unix://"
        )
    query = dict(parse_qsl(parts.query))
    db_text = query.get("db")
    if db_text is None and parts.scheme != "unix":
        db_text = parts.path.strip("/") or "0"
    try:
        db = int(db_text or "0")
    except ValueError:
        raise ValueError(f"redis_url {shown!r}: database must be an integer") from None
    if db < 0:
        raise ValueError(f"redis_url {shown!r}: database must be >= 0")
    password = unquote(parts.password) if parts.password is not None else None
    password = query.get("password", password)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"redis_url {shown!r}: unix:// needs a socket path")
        return RedisTarget(url, "unix", None, None, db,
                           unquote(parts.username) if parts.username else None, password,
                           unquote(parts.path))
    if not parts.hostname:
        raise ValueError(f"redis_url {shown!r}: no host")
    return RedisTarget(url, parts.scheme, unquote(parts.hostname), port or 6379, db,
                       unquote(parts.username) if parts.username else None, password)


def resolve_redis_url(configured: str | None = None) -> str:
    """The Redis URL to use: env REDIS_URL if set, else `configured` (serve.redis_url), else
    redis://127.0.0.1:6379/0."""
    return os.environ.get(REDIS_URL_ENV) or configured or DEFAULT_REDIS_URL
