"""Configuration: one frozen :class:`Settings` built once at start by :func:`load`.

Every process (web, each worker process, run, dlq, simulate, check) resolves its configuration
through :func:`load`: the real environment over ``.env`` in the working directory. Worker processes
are forked from ``wapipe worker`` after it loaded the settings and receive that same object.

Every variable is documented in ``.env.example`` and the README. Bad values raise
:class:`ConfigError`, which names the variable and what is wrong without echoing a secret; the
CLI turns it into one line on stderr and exit code 2.

Sandbox mode is on only when none of :data:`META_VARIABLES` is set. Any of them without the access
token is a half-configured production, refused at start: wapipe never falls back to the sandbox
(which has public secrets) because a token was forgotten.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import overload
from urllib.parse import urlsplit

#: Sandbox mode (no Meta setting at all) uses these fixed, public secrets.
SANDBOX_APP_SECRET = "sandbox-app-secret"  # noqa: S105 - public by design
SANDBOX_VERIFY_TOKEN = "sandbox-verify-token"  # noqa: S105 - public by design
SANDBOX_GRAPH_PATH = "/sandbox/graph"
#: Setting any of these means "production, against Meta": the access token is then required.
META_VARIABLES = (
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_APP_SECRET",
    "WHATSAPP_VERIFY_TOKEN",
    "WHATSAPP_GRAPH_URL",
)
#: Where the sandbox listens unless ``WAPIPE_HOST`` is set: its app secret is public.
SANDBOX_HOST = "127.0.0.1"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

DEFAULT_GRAPH_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v25.0"
DEFAULT_MEDIA_HOSTS = ("lookaside.fbsbx.com",)
DEFAULT_MAX_BODY_BYTES = 3_670_016
DEFAULT_MAX_QUEUE_DEPTH = 100_000
DEFAULT_SEND_RATE = 80
DEFAULT_MEDIA_MAX_BYTES = 104_857_600
DAY_SECONDS = 86_400

_API_VERSION = re.compile(r"^v\d+\.\d+$")
_PHONE_NUMBER_ID = re.compile(r"^[0-9]{1,32}\Z")
_HANDLER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


class ConfigError(ValueError):
    """A configuration variable is missing or malformed.

    ``str()`` is one line: the variable's name and what is wrong with it, never a secret's value.
    """

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """Return the secret value; call only where it is used (HMAC key, header)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a wapipe process needs, validated. Build it with :meth:`from_env`."""

    app_secret: Secret
    verify_token: Secret
    access_token: Secret | None
    #: The bearer token of ``POST /send`` (business-initiated messages); None: not mounted.
    send_token: Secret | None
    #: None in sandbox mode: the worker finds the emulator of its deployment at run time.
    graph_url: str | None
    api_version: str
    media_hosts: tuple[str, ...]
    redis_url: str | None
    data_dir: Path
    media_dir: Path
    port: int
    host: str
    metrics_port: int
    handler: str | None
    phone_number_ids: frozenset[str] | None
    max_body_bytes: int
    max_queue_depth: int
    send_rate: int
    media_max_bytes: int
    worker_processes: int
    worker_threads: int
    media_worker_threads: int
    log_level: str
    log_format: str
    redis_server: str | None
    allow_volatile_redis: bool
    dlq_retention_days: int
    # Tuning (WAPIPE_*), listed in .env.example; every default is in from_env, once.
    redis_timeout_seconds: float
    graph_timeout_seconds: float
    graph_attempts: int
    retry_max: int
    retry_min_backoff_ms: int
    retry_max_backoff_ms: int
    heartbeat_timeout_ms: int
    worker_poll_ms: int
    worker_cpu_affinity: str
    worker_nice: int
    worker_scheduler: str
    shutdown_timeout_seconds: float
    auth_pause_ms: int
    pair_interval_ms: int
    pair_burst: int
    message_dedup_ttl_seconds: int
    status_dedup_ttl_seconds: int
    history_messages: int
    history_characters: int
    #: The most bytes a conversation's state and variables may take, as JSON (``WAPIPE_MAX_STATE_BYTES``).
    max_state_bytes: int
    conversation_ttl_seconds: int
    status_retention_days: int
    trace_retention_hours: int
    media_retention_days: int
    order_wait_seconds: float
    #: Answer each user's messages one at a time, in order, whatever the handler
    #: (``WAPIPE_USER_ORDER``); a conversation bot's always are.
    user_order: bool
    redis_start_wait_seconds: float
    media_min_bytes_per_second: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    max_concurrent_requests: int
    max_buffered_bytes: int
    #: Start-up warnings about the configuration, logged by every process that serves.
    warnings: tuple[str, ...] = ()

    @property
    def sandbox(self) -> bool:
        """True when no Meta setting is given: the Graph API is the web's built-in emulator."""
        return self.access_token is None

    @property
    def graph_base(self) -> str:
        """``{graph_url}/{api_version}``, the prefix of every Graph API call (not in sandbox mode).

        Raises:
            RuntimeError: in sandbox mode, where the emulator's address is found at run time.
        """
        if self.graph_url is None:
            raise RuntimeError("sandbox mode has no fixed Graph API URL: find the emulator in Redis")
        return f"{self.graph_url.rstrip('/')}/{self.api_version}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Validate ``environ`` (the process environment merged with ``.env``) into Settings.

        Raises:
            ConfigError: naming the first variable that is missing or malformed.
        """
        env = _Env(environ)
        given = [name for name in META_VARIABLES if env.raw(name) is not None]
        sandbox = not given
        access_token = env.secret("WHATSAPP_ACCESS_TOKEN", required=False)
        if access_token is None and given:
            raise ConfigError(
                "WHATSAPP_ACCESS_TOKEN",
                f"is required: {' and '.join(given)} {'is' if len(given) == 1 else 'are'} set, which means "
                "production against Meta (leave every WHATSAPP_* setting unset for sandbox mode)",
            )
        port = env.integer("PORT", 8080, minimum=0, maximum=65535)
        max_body = env.integer("WAPIPE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1024)
        max_buffered = env.integer("WAPIPE_MAX_BUFFERED_BYTES", 67_108_864, minimum=1024)
        if max_buffered < max_body:
            raise ConfigError("WAPIPE_MAX_BUFFERED_BYTES", "must be at least WAPIPE_MAX_BODY_BYTES")
        data_dir = Path(env.text("WAPIPE_DATA_DIR", "./var")).expanduser()
        app_secret = env.secret("WHATSAPP_APP_SECRET", required=not sandbox)
        verify_token = env.secret("WHATSAPP_VERIFY_TOKEN", required=not sandbox)
        warnings: list[str] = []
        explicit_host = env.text("WAPIPE_HOST", None)
        if sandbox:
            host = explicit_host or SANDBOX_HOST
            if host not in LOOPBACK_HOSTS:
                warnings.append(
                    f"WAPIPE_HOST={host} in sandbox mode: anyone who reaches this address can post webhooks "
                    "signed with the public sandbox secret"
                )
            if env.raw("WHATSAPP_MEDIA_HOSTS") is not None:
                warnings.append(
                    "WHATSAPP_MEDIA_HOSTS is ignored in sandbox mode: media comes from the emulator"
                )
            media_hosts: tuple[str, ...] = ()
        else:
            host = explicit_host or "0.0.0.0"  # noqa: S104 - a server's documented default
            media_hosts = env.hosts("WHATSAPP_MEDIA_HOSTS", DEFAULT_MEDIA_HOSTS)
        return cls(
            app_secret=app_secret or Secret(SANDBOX_APP_SECRET),
            verify_token=verify_token or Secret(SANDBOX_VERIFY_TOKEN),
            access_token=access_token,
            send_token=env.secret("WAPIPE_SEND_TOKEN", required=False),
            graph_url=None
            if sandbox
            else env.url("WHATSAPP_GRAPH_URL", DEFAULT_GRAPH_URL, schemes=("http", "https")),
            api_version=env.pattern("WHATSAPP_API_VERSION", DEFAULT_API_VERSION, _API_VERSION, "like v25.0"),
            media_hosts=media_hosts,
            redis_url=env.url("REDIS_URL", None, schemes=("redis", "rediss", "unix")),
            data_dir=data_dir,
            media_dir=Path(env.text("WAPIPE_MEDIA_DIR", str(data_dir / "media"))).expanduser(),
            port=port,
            host=host,
            metrics_port=env.integer("WAPIPE_METRICS_PORT", 9191, minimum=0, maximum=65535),
            handler=env.pattern("WAPIPE_HANDLER", None, _HANDLER, "module:function"),
            phone_number_ids=env.phone_number_ids("WAPIPE_PHONE_NUMBER_IDS"),
            max_body_bytes=max_body,
            max_queue_depth=env.integer("WAPIPE_MAX_QUEUE_DEPTH", DEFAULT_MAX_QUEUE_DEPTH, minimum=1),
            send_rate=env.integer("WAPIPE_SEND_RATE", DEFAULT_SEND_RATE, minimum=0),
            media_max_bytes=env.integer("WAPIPE_MEDIA_MAX_BYTES", DEFAULT_MEDIA_MAX_BYTES, minimum=1),
            worker_processes=env.integer("WAPIPE_WORKER_PROCESSES", os.cpu_count() or 1, minimum=1),
            worker_threads=env.integer("WAPIPE_WORKER_THREADS", 8, minimum=1, maximum=1024),
            media_worker_threads=env.integer("WAPIPE_MEDIA_WORKER_THREADS", 8, minimum=1, maximum=1024),
            log_level=env.choice("WAPIPE_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            log_format=env.choice("WAPIPE_LOG_FORMAT", "text", ("text", "json")),
            redis_server=env.text("WAPIPE_REDIS_SERVER", None),
            allow_volatile_redis=env.boolean("WAPIPE_ALLOW_VOLATILE_REDIS", default=False),
            dlq_retention_days=env.integer("WAPIPE_DLQ_RETENTION_DAYS", 30, minimum=1),
            redis_timeout_seconds=env.number("WAPIPE_REDIS_TIMEOUT_SECONDS", 1.0, minimum=0.05),
            graph_timeout_seconds=env.number("WAPIPE_GRAPH_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            graph_attempts=env.integer("WAPIPE_GRAPH_ATTEMPTS", 3, minimum=1, maximum=10),
            retry_max=env.integer("WAPIPE_RETRY_MAX", 5, minimum=0, maximum=50),
            retry_min_backoff_ms=env.integer("WAPIPE_RETRY_MIN_BACKOFF_MS", 1_000, minimum=1),
            retry_max_backoff_ms=env.integer("WAPIPE_RETRY_MAX_BACKOFF_MS", 300_000, minimum=1),
            heartbeat_timeout_ms=env.integer("WAPIPE_HEARTBEAT_TIMEOUT_MS", 10_000, minimum=1_000),
            worker_poll_ms=env.integer("WAPIPE_WORKER_POLL_MS", 100, minimum=1, maximum=10_000),
            worker_cpu_affinity=env.choice("WAPIPE_WORKER_CPU_AFFINITY", "spread", ("spread", "none")),
            worker_nice=env.integer("WAPIPE_WORKER_NICE", 10, minimum=0, maximum=19),
            worker_scheduler=env.choice("WAPIPE_WORKER_SCHEDULER", "batch", ("batch", "normal")),
            shutdown_timeout_seconds=env.number("WAPIPE_SHUTDOWN_TIMEOUT_SECONDS", 30.0, minimum=0.1),
            auth_pause_ms=env.integer("WAPIPE_AUTH_PAUSE_MS", 30_000, minimum=10),
            pair_interval_ms=env.integer("WAPIPE_PAIR_INTERVAL_MS", 6_000, minimum=0),
            pair_burst=env.integer("WAPIPE_PAIR_BURST", 20, minimum=1, maximum=45),
            message_dedup_ttl_seconds=env.integer(
                "WAPIPE_MESSAGE_DEDUP_TTL_SECONDS", 8 * DAY_SECONDS, minimum=1
            ),
            status_dedup_ttl_seconds=env.integer("WAPIPE_STATUS_DEDUP_TTL_SECONDS", DAY_SECONDS, minimum=1),
            history_messages=env.integer("WAPIPE_HISTORY_MESSAGES", 20, minimum=1, maximum=1000),
            history_characters=env.integer("WAPIPE_HISTORY_CHARACTERS", 0, minimum=0),
            max_state_bytes=env.integer("WAPIPE_MAX_STATE_BYTES", 65_536, minimum=1_024),
            conversation_ttl_seconds=env.integer(
                "WAPIPE_CONVERSATION_TTL_SECONDS", 30 * DAY_SECONDS, minimum=60
            ),
            order_wait_seconds=env.number("WAPIPE_ORDER_WAIT_SECONDS", 30.0, minimum=0.0),
            user_order=env.boolean("WAPIPE_USER_ORDER", default=True),
            status_retention_days=env.integer("WAPIPE_STATUS_RETENTION_DAYS", 3, minimum=1),
            trace_retention_hours=env.integer("WAPIPE_TRACE_RETENTION_HOURS", 72, minimum=1),
            media_retention_days=env.integer("WAPIPE_MEDIA_RETENTION_DAYS", 0, minimum=0),
            redis_start_wait_seconds=env.number("WAPIPE_REDIS_START_WAIT_SECONDS", 30.0, minimum=0.0),
            media_min_bytes_per_second=env.integer("WAPIPE_MEDIA_MIN_BYTES_PER_SECOND", 65_536, minimum=1),
            header_timeout_seconds=env.number("WAPIPE_HEADER_TIMEOUT_SECONDS", 15.0, minimum=0.1),
            body_timeout_seconds=env.number("WAPIPE_BODY_TIMEOUT_SECONDS", 15.0, minimum=0.1),
            max_concurrent_requests=env.integer("WAPIPE_MAX_CONCURRENT_REQUESTS", 512, minimum=1),
            max_buffered_bytes=max_buffered,
            warnings=tuple(warnings),
        )


class _Env:
    """Typed, validating reads of one environment mapping; blank counts as unset."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value

    @overload
    def text(self, name: str, default: str) -> str: ...
    @overload
    def text(self, name: str, default: None) -> str | None: ...
    def text(self, name: str, default: str | None) -> str | None:
        value = self.raw(name)
        return default if value is None else value.strip()

    def secret(self, name: str, *, required: bool) -> Secret | None:
        value = self.raw(name)
        if value is None:
            if required:
                raise ConfigError(name, "is required (it is unset or empty)")
            return None
        if value != value.strip() or any(ch.isspace() for ch in value):
            raise ConfigError(name, "is malformed: it contains white space (value not shown)")
        if not value.isprintable() or not value.isascii():
            raise ConfigError(name, "is malformed: it must be printable ASCII (value not shown)")
        return Secret(value)

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = int(value.strip())
        except ValueError:
            raise ConfigError(name, f"must be a whole number, got {value.strip()!r}") from None
        if number < minimum or (maximum is not None and number > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise ConfigError(name, f"must be at least {minimum}{upper}, got {number}")
        return number

    def number(self, name: str, default: float, *, minimum: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value.strip())
        except ValueError:
            raise ConfigError(name, f"must be a number, got {value.strip()!r}") from None
        if not number >= minimum or number == float("inf"):
            raise ConfigError(name, f"must be a finite number of at least {minimum}, got {value.strip()!r}")
        return number

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, f"must be 1 or 0 (true/false), got {value.strip()!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name)
        if value is None:
            return default
        for choice in choices:
            if value.strip().lower() == choice.lower():
                return choice
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value.strip()!r}")

    @overload
    def pattern(self, name: str, default: str, regex: re.Pattern[str], shape: str) -> str: ...
    @overload
    def pattern(self, name: str, default: None, regex: re.Pattern[str], shape: str) -> str | None: ...
    def pattern(self, name: str, default: str | None, regex: re.Pattern[str], shape: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return default
        if not regex.match(value.strip()):
            raise ConfigError(name, f"must look like {shape}, got {value.strip()!r}")
        return value.strip()

    @overload
    def url(self, name: str, default: str, *, schemes: tuple[str, ...]) -> str: ...
    @overload
    def url(self, name: str, default: None, *, schemes: tuple[str, ...]) -> str | None: ...
    def url(self, name: str, default: str | None, *, schemes: tuple[str, ...]) -> str | None:
        value = self.raw(name)
        if value is None:
            return default
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in schemes or (parts.scheme != "unix" and not parts.hostname):
            shown = _redact_url(value)
            raise ConfigError(name, f"must be a {'/'.join(schemes)} URL with a host, got {shown!r}")
        return value

    def hosts(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return default
        hosts = tuple(part.strip().lower() for part in value.split(",") if part.strip())
        bad = [host for host in hosts if not _HOST.match(host)]
        if not hosts or bad:
            raise ConfigError(name, f"must be a comma list of host names, got {value.strip()!r}")
        return hosts

    def phone_number_ids(self, name: str) -> frozenset[str] | None:
        value = self.raw(name)
        if value is None:
            return None
        ids = [part.strip() for part in value.split(",") if part.strip()]
        bad = [pid for pid in ids if not _PHONE_NUMBER_ID.match(pid)]
        if not ids or bad:
            raise ConfigError(
                name, f"must be a comma list of numeric phone number ids, got {value.strip()!r}"
            )
        return frozenset(ids)


def _redact_url(url: str) -> str:
    """Hide a password in a URL (``redis://:pw@host`` → ``redis://:***@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def redact_url(url: str | None) -> str | None:
    """Public form of :func:`_redact_url` for logs and error messages."""
    return None if url is None else _redact_url(url)


#: The file every process reads, in the directory it was started from.
ENV_FILE = Path(".env")


def load_environment(environ: Mapping[str, str], env_file: Path = ENV_FILE) -> dict[str, str]:
    """The process environment merged over ``.env`` (when present): real variables win."""
    merged: dict[str, str] = {}
    if env_file.is_file():
        from dotenv import dotenv_values

        merged.update({key: value for key, value in dotenv_values(env_file).items() if value is not None})
    merged.update(environ)
    return merged


def load(environ: Mapping[str, str] | None = None, env_file: Path = ENV_FILE) -> Settings:
    """The settings of this process: ``environ`` (default: the real environment) over ``.env``.

    The one way every wapipe process resolves its configuration.

    Raises:
        ConfigError: naming the first variable that is missing or malformed.
    """
    return Settings.from_env(load_environment(os.environ if environ is None else environ, env_file))
