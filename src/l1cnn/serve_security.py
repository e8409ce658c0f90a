"""What keeps strangers out of ``l1cnn serve``: bearer tokens, TLS files, rate limits, headers.

Standard library only, so the CLI can read the options without loading the server. The policy:
off loopback a token is required unless ``--no-auth`` says otherwise; tokens are compared in
constant time and never printed; ``/healthz`` and the page itself are open (the page asks for the
token and sends it with every API call); a per-client token bucket answers 429 with
``Retry-After``; every response says ``nosniff`` and carries a Content-Security-Policy.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import ssl
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l1cnn.errors import ConfigError

TOKEN_ENV = "L1CNN_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16
DEFAULT_REQUESTS_PER_MINUTE = 600  # off loopback: 10/s sustained per client, bursts of 600
OPEN_PATHS = frozenset({"/", "/healthz"})  # the page (it asks for the token) and load balancers
METRICS_PATH = "/metrics"
UNLIMITED_PATHS = frozenset({"/healthz"})  # polled by load balancers; cheap


@dataclass(frozen=True)
class ServeSecurity:
    """Who may use the server and how fast: the ``serve`` options beyond address and limits."""

    token_file: str | None = field(
        default=None,
        metadata={
            "help": "file holding the bearer token clients must send; created with a random "
            f"token (mode 0600) if missing (default: ${TOKEN_ENV}, else none on loopback)",
            "metavar": "FILE",
        },
    )
    no_auth: bool = field(
        default=False,
        metadata={"help": "serve a non-loopback address without a token (dangerous)"},
    )
    tls_cert: str | None = field(
        default=None,
        metadata={
            "help": "PEM certificate (chain) to serve HTTPS; needs --tls-key",
            "metavar": "FILE",
        },
    )
    tls_key: str | None = field(
        default=None,
        metadata={"help": "PEM private key (unencrypted) for --tls-cert", "metavar": "FILE"},
    )
    max_requests_per_minute: int | None = field(
        default=None,
        metadata={
            "help": "requests per minute per client address, then 429 (0: no limit; default "
            f"none on loopback, {DEFAULT_REQUESTS_PER_MINUTE} otherwise)",
            "metavar": "N",
        },
    )
    allow_origin: str | None = field(
        default=None,
        metadata={
            "help": "let pages from this origin call the API (CORS), e.g. https://app.example",
            "metavar": "ORIGIN",
        },
    )
    metrics_public: bool = field(
        default=False,
        metadata={"help": "serve /metrics without the token (for a scraper inside the network)"},
    )

    def __post_init__(self) -> None:
        if self.max_requests_per_minute is not None and self.max_requests_per_minute < 0:
            raise ConfigError(
                f"--max-requests-per-minute must be >= 0, got {self.max_requests_per_minute}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        if self.no_auth and self.token_file:
            raise ConfigError("--no-auth and --token-file contradict each other: choose one")
        if self.allow_origin is not None and (
            not self.allow_origin.startswith(("http://", "https://"))
            or self.allow_origin.rstrip("/") != self.allow_origin
        ):
            raise ConfigError(
                f"--allow-origin must look like https://host[:port], got {self.allow_origin!r}"
            )

    def open_paths(self) -> frozenset[str]:
        """Paths answered without a token (``/metrics`` joins them with ``--metrics-public``)."""
        return OPEN_PATHS | ({METRICS_PATH} if self.metrics_public else frozenset())

    def rate(self, loopback: bool) -> int:
        """Requests per minute per client; 0 means no limit."""
        if self.max_requests_per_minute is not None:
            return self.max_requests_per_minute
        return 0 if loopback else DEFAULT_REQUESTS_PER_MINUTE


@dataclass(frozen=True)
class Token:
    """A resolved bearer token and where it came from (the value is never shown)."""

    value: str
    source: str  # what to print: "the file X", "$L1CNN_SERVE_TOKEN", "a new random token in X"

    def __repr__(self) -> str:  # keep the secret out of tracebacks and logs
        return f"Token(source={self.source!r})"


def _check_token(value: str, where: str) -> str:
    value = value.strip()
    if len(value) < MIN_TOKEN_CHARS:
        raise ConfigError(f"the token in {where} is shorter than {MIN_TOKEN_CHARS} characters")
    if not all(33 <= ord(c) < 127 for c in value):
        raise ConfigError(f"the token in {where} must be printable ASCII without spaces")
    return value


def write_new_token(path: Path) -> str:
    """A fresh random token written to ``path`` with mode 0600 (temp file, then rename)."""
    value = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write a token to {path}: {exc.strerror or exc}") from None
    return value


def _read_token_file(path: Path) -> tuple[str, list[str]]:
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"the token in {path} must be printable ASCII") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    warnings = []
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(f"{path} can be read by other users of this machine (chmod 600 {path})")
    return _check_token(text, str(path)), warnings


def resolve_token(
    security: ServeSecurity, host: str, loopback: bool, environ: dict[str, str] | None = None
) -> tuple[Token | None, list[str]]:
    """The token the server will require, or None, and warnings to print.

    Precedence: ``--no-auth`` (none), then ``--token-file`` (read; created with a random token
    if missing), then ``$L1CNN_SERVE_TOKEN``; with none of them loopback serves without a token
    and any other address is refused.

    Raises:
        ConfigError: a non-loopback bind with no token and no ``--no-auth``, or a bad token.
    """
    environ = os.environ if environ is None else environ
    if security.no_auth:
        warnings = []
        if not loopback:
            warnings.append(
                f"--no-auth: anyone who can reach {host} can use the model, read its "
                "configuration and metrics at /v1/model and send it images; keep this to "
                "networks you trust"
            )
        if environ.get(TOKEN_ENV):
            warnings.append(f"--no-auth: ${TOKEN_ENV} is set and ignored")
        return None, warnings
    if security.token_file:
        path = Path(security.token_file).expanduser()
        if not path.exists():
            write_new_token(path)
            return Token(_read_token_file(path)[0], f"a new random token in {path}"), []
        value, warnings = _read_token_file(path)
        return Token(value, f"the file {path}"), warnings
    if environ.get(TOKEN_ENV):
        return Token(_check_token(environ[TOKEN_ENV], f"${TOKEN_ENV}"), f"${TOKEN_ENV}"), []
    if loopback:
        return None, []
    raise ConfigError(
        f"binding {host} lets other machines in, so it needs a token: --token-file FILE "
        f"(created with a random token if missing), ${TOKEN_ENV}, or --no-auth if the network "
        "is trusted"
    )


def check_tls_files(security: ServeSecurity) -> None:
    """Refuse a missing, unreadable, encrypted or mismatched certificate/key pair up front.

    Raises:
        ConfigError: naming the file and the reason.
    """
    if security.tls_cert is None or security.tls_key is None:
        return
    for flag, name in (("--tls-cert", security.tls_cert), ("--tls-key", security.tls_key)):
        try:
            with open(name, "rb") as f:
                f.read(1)
        except OSError as exc:
            raise ConfigError(f"{flag} {name}: {exc.strerror or exc}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def no_password() -> str:  # an encrypted key would otherwise prompt on the terminal
        raise ConfigError(f"--tls-key {security.tls_key} is encrypted; give an unencrypted key")

    try:
        context.load_cert_chain(security.tls_cert, security.tls_key, password=no_password)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"--tls-cert {security.tls_cert} and --tls-key {security.tls_key} do not load as "
            f"a pair (not PEM, or the key does not match the certificate): {exc.reason or exc}"
        ) from None


class TokenBucket:
    """Per-key token buckets: ``capacity`` requests at once, refilled at ``per_minute`` / 60 s."""

    MAX_KEYS = 10_000  # forget idle clients beyond this many, so the table cannot grow unbounded

    def __init__(self, per_minute: int, clock: Any = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)

    def take(self, key: str) -> float:
        """0.0 if ``key`` may go now (one token taken), else the seconds until it may."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self.MAX_KEYS:
                self._forget_full(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self.rate >= self.capacity:
                del self._buckets[key]


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _send_json(send: Any, status: int, message: str, extra: Iterable = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *extra],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps({"error": message}).encode()})


class RateLimit:
    """ASGI middleware: a token bucket per client address; over it, 429 with ``Retry-After``.

    The address is the TCP peer: behind a reverse proxy every client shares the proxy's bucket.
    """

    def __init__(self, app: Any, per_minute: int) -> None:
        self.app = app
        self.per_minute = per_minute
        self.buckets = TokenBucket(per_minute)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait = self.buckets.take(client[0] if client else "")
        if wait > 0:
            retry = str(max(1, math.ceil(wait))).encode()
            message = f"over the limit of {self.per_minute} requests per minute; retry later"
            await _send_json(send, 429, message, [(b"retry-after", retry)])
            return
        await self.app(scope, receive, send)


class BearerAuth:
    """ASGI middleware: every path but ``open_paths`` needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str, open_paths: frozenset[str]) -> None:
        self.app = app
        self.expected = b"Bearer " + token.encode("ascii")
        self.open_paths = open_paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and _header(scope, b"origin") is not None:
            await self.app(scope, receive, send)  # a CORS preflight carries no credentials
            return
        given = _header(scope, b"authorization") or b""
        if not secrets.compare_digest(given, self.expected):  # constant time
            message = "missing or wrong token: send the header Authorization: Bearer <token>"
            await _send_json(send, 401, message, [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


class SecurityHeaders:
    """ASGI middleware: ``nosniff``, no framing, no referrer and a CSP on every response.

    The page's own CSP (set by its route) is kept; everything else gets ``default-src 'none'``.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                    (b"content-security-policy", API_CSP.encode()),
                ]
                headers += [(k, v) for k, v in extra if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
