"""Start-up checks shared by the commands, each failing with one line and a documented exit code.

Exit codes: 0 ok, 1 failure at run time, 2 bad configuration or usage (a setting, a port in use,
a directory that cannot be written, a handler that cannot be imported, a Redis that keeps nothing),
3 Redis unreachable after the start-up wait (``WAPIPE_REDIS_START_WAIT_SECONDS``).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

import redis

from daemon.config import Settings, redact_url
from daemon.redis_check import VolatileRedis, check_persistence

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_REDIS = 3


class StartupError(Exception):
    """A command cannot go on; ``code`` is the exit code, ``str()`` the one-line reason."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


def embedded_socket(settings: Settings) -> Path:
    """Where ``wapipe run``'s embedded Redis listens."""
    return settings.data_dir / "redis.sock"


def resolve_redis_url(settings: Settings) -> str:
    """``REDIS_URL``, else the embedded Redis of a running ``wapipe run`` in the same data dir.

    Raises:
        StartupError: neither is available.
    """
    if settings.redis_url:
        return settings.redis_url
    sock = embedded_socket(settings)
    if sock.exists():
        url = f"unix://{sock.resolve()}"
        try:
            redis.Redis.from_url(url, socket_timeout=1).ping()
        except redis.RedisError:
            pass
        else:
            return url
    raise StartupError(
        "REDIS_URL is not set and no `wapipe run` is running in WAPIPE_DATA_DIR "
        f"({settings.data_dir}): set REDIS_URL or use `wapipe run`"
    )


def wait_for_redis(settings: Settings, redis_url: str) -> None:
    """Wait up to ``WAPIPE_REDIS_START_WAIT_SECONDS`` for Redis, then check that it keeps what it
    acknowledges (AOF or snapshots, unless ``WAPIPE_ALLOW_VOLATILE_REDIS``).

    Raises:
        StartupError: exit 3 when Redis never answered, 2 when it keeps nothing.
    """
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    deadline = time.monotonic() + settings.redis_start_wait_seconds
    warned = False
    try:
        while True:
            try:
                check_persistence(client, allow_volatile=settings.allow_volatile_redis)
            except VolatileRedis as error:
                raise StartupError(str(error)) from None
            except redis.RedisError as error:
                if time.monotonic() >= deadline:
                    raise StartupError(
                        f"REDIS_URL: cannot reach Redis at {redact_url(redis_url)} "
                        f"(waited {settings.redis_start_wait_seconds:g} s): {_reason(error)}",
                        EXIT_REDIS,
                    ) from None
                if not warned:
                    log.warning("redis_waiting", extra={"error": type(error).__name__})
                    warned = True
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            else:
                return
    finally:
        client.close()


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def writable_dir(path: Path, variable: str) -> None:
    """Create ``path`` if needed and prove a file can be written in it.

    Raises:
        StartupError: naming ``variable`` and why (exit 2).
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".wapipe-check-"):
            pass
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        if error.errno in (errno.ENOTDIR, errno.EEXIST):
            reason = "a file stands in its path"
        raise StartupError(f"{variable}: cannot write in {path}: {reason}") from None


def listen_error(variable: str, host: str, port: int, error: OSError) -> StartupError:
    """One line for a port that cannot be listened on (in use, not permitted), naming ``variable``,
    or for an address that is not this machine's, naming ``WAPIPE_HOST``."""
    if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
        variable, why = "WAPIPE_HOST", "this machine has no such address"
    elif error.errno == errno.EADDRINUSE:
        why = "the port is already in use by another program"
    elif error.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied (ports below 1024 need privileges)"
    else:
        why = error.strerror or str(error)
    return StartupError(f"{variable}: cannot listen on {host}:{port}: {why}")
