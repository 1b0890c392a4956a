"""``wapipe check``: is this deployment ready to run? One line per check, nothing changed.

Checks the configuration, that Redis answers and keeps what it acknowledges, that the Graph API
accepts the access token (one cheap authenticated read), that the data and media directories can
be written, and that the reply handler imports. Run it before the first start, and after changing
a secret.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from daemon.config import ENV_FILE, Settings, redact_url
from daemon.handler import HandlerError, load_handler
from daemon.redis_check import VolatileRedis, check_persistence
from daemon.sandbox_link import read as read_emulator
from daemon.startup import StartupError, resolve_redis_url, writable_dir

#: Each network check waits at most this long.
TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    status: str  # "ok", "warn" or "FAIL"
    detail: str


def run_checks(settings: Settings) -> list[Result]:
    """Every check, in order; a failure does not stop the next ones (a skipped one says why)."""
    results = [_configuration(settings)]
    results.extend(Result("configuration", "warn", warning) for warning in settings.warnings)
    client = None
    try:
        redis_result, client = _redis(settings)
        results.append(redis_result)
        results.append(_graph(settings, client))
    finally:
        if client is not None:
            client.close()
    results.append(_directory("data dir", settings.data_dir, "WAPIPE_DATA_DIR"))
    results.append(_directory("media dir", settings.media_dir, "WAPIPE_MEDIA_DIR"))
    results.append(_handler(settings))
    return results


def _configuration(settings: Settings) -> Result:
    source = f"environment and {ENV_FILE.resolve()}" if ENV_FILE.is_file() else "environment (no .env here)"
    if settings.sandbox:
        return Result("configuration", "ok", f"sandbox mode (no WHATSAPP_* setting); read from the {source}")
    numbers = (
        f"{len(settings.phone_number_ids)} phone number id(s)"
        if settings.phone_number_ids
        else "every number"
    )
    return Result(
        "configuration",
        "ok",
        f"production, Graph API {settings.graph_base}, {numbers}; read from the {source}",
    )


def _redis(settings: Settings) -> tuple[Result, redis.Redis | None]:
    try:
        url = resolve_redis_url(settings)
    except StartupError as error:
        return Result("redis", "FAIL", str(error)), None
    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS)
    shown = redact_url(url)
    try:
        found = check_persistence(client, allow_volatile=settings.allow_volatile_redis)
        version = client.info("server").get("redis_version", "?")
    except VolatileRedis as error:
        return Result("redis", "FAIL", f"{shown}: {error}"), client
    except redis.RedisError as error:
        client.close()
        return Result("redis", "FAIL", f"cannot reach {shown}: {' '.join(str(error).split())[:200]}"), None
    if found.aof:
        keeps = "AOF on"
    elif found.snapshots:
        return Result("redis", "warn", f"{shown} answers (Redis {version}); snapshots only, no AOF"), client
    else:
        keeps = (
            "persistence unknown (CONFIG is disabled)"
            if found.snapshots is None
            else "no persistence (allowed)"
        )
    return Result("redis", "ok", f"{shown} answers (Redis {version}); {keeps}"), client


def _graph(settings: Settings, client: redis.Redis | None) -> Result:
    if settings.sandbox:
        if client is None:
            return Result(
                "graph api", "FAIL", "sandbox mode: the emulator is found through Redis, unreachable"
            )
        record = read_emulator(client)
        where = (
            f"recorded at {record.web_url}"
            if record
            else "not running yet: start `wapipe web` or `wapipe run`"
        )
        return Result("graph api", "ok", f"sandbox mode: the emulator served by `wapipe web` ({where})")
    assert settings.access_token is not None
    numbers = sorted(settings.phone_number_ids or ())
    path = f"/{quote(numbers[0], safe='')}?fields=id,display_phone_number" if numbers else "/me?fields=id"
    url = settings.graph_base + path
    request = urllib.request.Request(  # noqa: S310 - WHATSAPP_GRAPH_URL is http(s), validated
        url, headers={"Authorization": f"Bearer {settings.access_token.get()}", "User-Agent": "wapipe-check"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            response.read(65_536)
    except urllib.error.HTTPError as error:
        return Result(
            "graph api", "FAIL", f"GET {path.split('?')[0]} answered {error.code}: {_graph_reason(error)}"
        )
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        return Result("graph api", "FAIL", f"cannot reach {settings.graph_base}: {reason}")
    what = f"phone number id {numbers[0]}" if numbers else "the token's owner (GET /me)"
    return Result("graph api", "ok", f"the access token is accepted by {settings.graph_base} ({what})")


def _graph_reason(error: urllib.error.HTTPError) -> str:
    try:
        data = json.loads(error.read(65_536))
        detail = data["error"]
        code, message = detail.get("code"), str(detail.get("message", ""))[:200]
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        return str(error.reason)
    if code in (0, 190):
        return f"the access token is refused (code {code}: {message}); renew WHATSAPP_ACCESS_TOKEN"
    return f"code {code}: {message}"


def _directory(name: str, path: Path, variable: str) -> Result:
    try:
        writable_dir(path, variable)
    except StartupError as error:
        return Result(name, "FAIL", str(error))
    return Result(name, "ok", f"{path.resolve()} is writable")


def _handler(settings: Settings) -> Result:
    if settings.handler is None:
        return Result("handler", "ok", "the built-in reply table (WAPIPE_HANDLER is unset)")
    try:
        handler = load_handler(settings.handler)
    except HandlerError as error:
        return Result("handler", "FAIL", f"WAPIPE_HANDLER={settings.handler}: {error}")
    module = getattr(handler, "__module__", "?")
    origin = getattr(sys.modules.get(module), "__file__", None) or "built in"
    return Result("handler", "ok", f"{settings.handler} imports ({origin})")
