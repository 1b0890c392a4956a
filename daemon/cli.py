"""``wapipe``: the command line of every wapipe process.

Exit codes: 0 ok, 1 failure at run time, 2 bad configuration or usage, 3 Redis unreachable at start.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from daemon import logs
from daemon.config import ConfigError, Settings, load_environment, redact_url

log = logging.getLogger("daemon.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_REDIS = 3

#: How long a starting worker waits for Redis before giving up.
REDIS_START_WAIT_SECONDS = 30.0


class CommandError(Exception):
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
        CommandError: neither is available.
    """
    if settings.redis_url:
        return settings.redis_url
    sock = embedded_socket(settings)
    if sock.exists():
        import redis

        url = f"unix://{sock.resolve()}"
        try:
            redis.Redis.from_url(url, socket_timeout=1).ping()
        except redis.RedisError:
            pass
        else:
            return url
    raise CommandError(
        "REDIS_URL is not set and no `wapipe run` is running in WAPIPE_DATA_DIR "
        f"({settings.data_dir}): set REDIS_URL or use `wapipe run`"
    )


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    from aiohttp import web

    from daemon.web import make_app

    redis_url = resolve_redis_url(settings)
    log.info(
        "web_starting",
        extra={
            "host": settings.host,
            "port": settings.port,
            "redis": redact_url(redis_url),
            "sandbox": settings.sandbox,
        },
    )
    web.run_app(
        make_app(settings, redis_url),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout_seconds,
        print=None,
        access_log=None,
    )
    return EXIT_OK


def _check_worker_redis(settings: Settings, redis_url: str) -> None:
    import redis

    from daemon.redis_check import VolatileRedis, check_persistence

    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    deadline = time.monotonic() + REDIS_START_WAIT_SECONDS
    try:
        while True:
            try:
                check_persistence(client, allow_volatile=settings.allow_volatile_redis)
            except VolatileRedis as error:
                raise CommandError(str(error)) from None
            except redis.RedisError as error:
                if time.monotonic() >= deadline:
                    raise CommandError(
                        f"cannot reach Redis at {redact_url(redis_url)}: {error}", EXIT_REDIS
                    ) from None
                log.warning("redis_waiting", extra={"error": type(error).__name__})
                time.sleep(1.0)
            else:
                return
    finally:
        client.close()


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.handler import HandlerError, load_handler
    from daemon.queue import QUEUES

    try:
        load_handler(settings.handler)
    except HandlerError as error:
        raise CommandError(f"WAPIPE_HANDLER: {error}") from None
    redis_url = resolve_redis_url(settings)
    _check_worker_redis(settings, redis_url)
    # Read by dramatiq.worker when it is first imported, which happens just below.
    os.environ["dramatiq_worker_timeout"] = str(settings.worker_poll_ms)  # noqa: SIM112 - dramatiq's name
    os.environ["WAPIPE_RESOLVED_REDIS_URL"] = redis_url
    metrics_dir = _own_metrics_dir(settings)
    # Must be set before prometheus_client is first imported, here and in the forked processes.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from dramatiq import cli as dramatiq_cli

    from daemon.worker_metrics import serve_worker_metrics

    try:
        server = serve_worker_metrics(metrics_dir, settings.host, settings.metrics_port)
    except OSError as error:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        raise CommandError(
            f"WAPIPE_METRICS_PORT: cannot listen on {settings.metrics_port}: {error.strerror}"
        ) from None

    argv = [
        "actors.broker:setup",
        "--processes",
        str(settings.worker_processes),
        "--threads",
        str(settings.worker_threads),
        "--worker-shutdown-timeout",
        str(int(settings.shutdown_timeout_seconds * 1000)),
        "--skip-logging",
        "--queues",
        *QUEUES,
    ]
    log.info(
        "worker_starting",
        extra={
            "processes": settings.worker_processes,
            "threads": settings.worker_threads,
            "redis": redact_url(redis_url),
        },
    )
    parser = dramatiq_cli.make_argument_parser()  # type: ignore[no-untyped-call]
    try:
        return int(dramatiq_cli.main(parser.parse_args(argv)))  # type: ignore[no-untyped-call]
    finally:
        server.shutdown()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _own_metrics_dir(settings: Settings) -> Path:
    """A fresh directory for this ``wapipe worker`` only: another worker never shares or wipes it."""
    base = settings.data_dir / "metrics"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"worker-{os.getpid()}-", dir=base))


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.embedded import EmbeddedRedisError, RedisServerNotFound
    from daemon.run import supervise

    try:
        return supervise(settings)
    except (RedisServerNotFound, EmbeddedRedisError) as error:
        raise CommandError(str(error)) from None


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from daemon.simulate import SimulateError, simulate

    try:
        reply = asyncio.run(
            simulate(settings, text=args.text, image=args.image, url=args.url, wait_seconds=args.timeout)
        )
    except SimulateError as error:
        raise CommandError(str(error), EXIT_FAILURE) from None
    print(reply)
    return EXIT_OK


def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    import json

    import redis

    from daemon import dlq

    client = redis.Redis.from_url(resolve_redis_url(settings), socket_timeout=10)
    try:
        if args.action == "list":
            letters = dlq.all_letters(client)
            if args.json:
                print(json.dumps([letter.summary() for letter in letters], indent=2))
            for letter in [] if args.json else letters:
                summary = letter.summary()
                what = summary["what"]
                ids = what.get("message_id") or what.get("envelope_id")
                reason = summary["reason"]
                code = f" code={reason['code']}" if "code" in reason else ""
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.failed_at))
                print(
                    f"{letter.id}  {stamp}  {letter.stage:<11} {what['kind']}={ids}  {reason.get('type')}{code}"
                )
            if not args.json:
                print(f"{len(letters)} dead letter(s)")
        elif args.action == "show":
            letter = dlq.find(client, args.id)
            print(
                json.dumps({**letter.summary(), "reason": letter.reason, "message": letter.message}, indent=2)
            )
        elif args.action == "replay":
            if args.all == (args.id is not None):
                raise CommandError("dlq replay takes one ID, or --all")
            letters = dlq.all_letters(client) if args.all else [dlq.find(client, args.id)]
            for letter in letters:
                dlq.replay(client, letter)
                print(f"replayed {letter.id} ({letter.stage})")
        elif args.action == "purge":
            older = None if args.all else settings.dlq_retention_days * 86_400
            print(f"purged {dlq.purge(client, older_than_seconds=older)} dead letter(s)")
    except dlq.NotFound as error:
        raise CommandError(str(error), EXIT_FAILURE) from None
    except redis.RedisError as error:
        raise CommandError(f"Redis: {error}", EXIT_REDIS) from None
    finally:
        client.close()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wapipe", description="WhatsApp Cloud API webhook pipeline.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("web", help="serve the webhook, health, readiness and metrics on $PORT")
    commands.add_parser("worker", help="run the pipeline's actors (Dramatiq worker processes)")
    commands.add_parser("run", help="one machine: embedded Redis (unless REDIS_URL), web and worker")
    sim = commands.add_parser("simulate", help="post a signed test webhook and print the reply (sandbox)")
    what = sim.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="send a text message")
    what.add_argument("--image", type=Path, help="upload this image to the emulator and send it")
    sim.add_argument("--url", help="webhook URL (default http://127.0.0.1:$PORT/webhook)")
    sim.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply (default 10)")
    dead = commands.add_parser("dlq", help="list, show, replay or purge dead letters")
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every dead letter: id, time, stage, what, reason")
    listing.add_argument("--json", action="store_true", help="as JSON")
    actions.add_parser("show", help="one dead letter in full").add_argument("id")
    replaying = actions.add_parser("replay", help="run a dead letter again from its stage, once")
    replaying.add_argument("id", nargs="?")
    replaying.add_argument("--all", action="store_true", help="replay every dead letter")
    purging = actions.add_parser("purge", help="delete dead letters older than WAPIPE_DLQ_RETENTION_DAYS")
    purging.add_argument("--all", action="store_true", help="delete every dead letter")
    return parser


COMMANDS = {"web": cmd_web, "worker": cmd_worker, "run": cmd_run, "simulate": cmd_simulate, "dlq": cmd_dlq}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(load_environment(os.environ))
    except ConfigError as error:
        print(f"wapipe: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(settings.log_level, settings.log_format)
    try:
        return COMMANDS[args.command](settings, args)
    except CommandError as error:
        print(f"wapipe: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return EXIT_OK
