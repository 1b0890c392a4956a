"""``wapipe``: the command line of every wapipe process.

Every command reads its configuration the same way (:func:`daemon.config.load`: the environment
over ``.env`` in the working directory) and reports a user's mistake in one line on stderr, never
a traceback. Exit codes: 0 ok, 1 failure at run time, 2 bad configuration or usage, 3 Redis
unreachable at start.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from daemon import config, logs
from daemon.config import ConfigError, Settings, redact_url
from daemon.startup import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_REDIS,
    StartupError,
    listen_error,
    resolve_redis_url,
    wait_for_redis,
    writable_dir,
)

log = logging.getLogger("daemon.cli")

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "EXIT_REDIS", "main"]


def version() -> str:
    """The installed distribution's version (the source tree's when run from a checkout)."""
    try:
        return metadata.version("wapipe")
    except metadata.PackageNotFoundError:
        from daemon import __version__

        return __version__


def _log_warnings(settings: Settings) -> None:
    for warning in settings.warnings:
        log.warning("configuration_warning", extra={"warning": warning})


def load_handler_or_fail(settings: Settings) -> None:
    """Import ``WAPIPE_HANDLER`` from the working directory now, so a mistake is one line at start."""
    from daemon.handler import HandlerError, load_handler

    try:
        load_handler(settings.handler)
    except HandlerError as error:
        raise StartupError(f"WAPIPE_HANDLER={settings.handler}: {error}") from None


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from daemon.web import serve

    redis_url = resolve_redis_url(settings)
    wait_for_redis(settings, redis_url)
    _log_warnings(settings)
    log.info(
        "web_starting",
        extra={
            "host": settings.host,
            "port": settings.port,
            "redis": redact_url(redis_url),
            "sandbox": settings.sandbox,
        },
    )
    asyncio.run(serve(settings, redis_url))
    return EXIT_OK


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    load_handler_or_fail(settings)
    writable_dir(settings.data_dir, "WAPIPE_DATA_DIR")
    writable_dir(settings.media_dir, "WAPIPE_MEDIA_DIR")
    redis_url = resolve_redis_url(settings)
    wait_for_redis(settings, redis_url)
    _log_warnings(settings)

    from daemon.store.media import remove_abandoned_parts
    from daemon.worker_metrics import MetricsDir, bind_metrics, serve

    with contextlib.ExitStack() as cleanup:  # undone in reverse order, however the worker ends
        metrics_dir = MetricsDir.claim(settings.data_dir)
        cleanup.callback(metrics_dir.remove)
        # Read by prometheus-client when it is first imported (just below), here and in the forked
        # worker processes: their metrics go to this worker's own directory.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir.path)
        wanted = settings.metrics_port
        try:
            server = bind_metrics(metrics_dir.path, settings.host, wanted)
        except OSError as error:
            raise listen_error("WAPIPE_METRICS_PORT", settings.host, wanted, error) from None
        cleanup.callback(server.server_close)
        port = int(server.server_address[1])
        if wanted not in (0, port):
            log.warning("metrics_port_taken", extra={"wanted": wanted, "port": port})
        removed = remove_abandoned_parts(settings.media_dir)
        if removed:
            log.info("abandoned_downloads_removed", extra={"files": removed})

        from actors.supervisor import Supervisor

        # Each worker on this host takes its own CPUs: its pipeline processes and its media process.
        supervisor = Supervisor(
            settings, redis_url, first_cpu=metrics_dir.slot * (settings.worker_processes + 1)
        )
        supervisor.start()  # fork before any thread of this process starts
        serve(server)
        cleanup.callback(server.shutdown)
        metrics_dir.advertise(settings.host, port)
        log.info(
            "worker_starting",
            extra={
                "processes": settings.worker_processes,
                "threads": settings.worker_threads,
                "redis": redact_url(redis_url),
                "metrics_port": port,
                "slot": metrics_dir.slot,
                "sandbox": settings.sandbox,
            },
        )
        return supervisor.wait()


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.embedded import EmbeddedRedisError, RedisServerNotFound
    from daemon.run import supervise

    try:
        return supervise(settings)
    except (RedisServerNotFound, EmbeddedRedisError) as error:
        raise StartupError(str(error)) from None


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from daemon.simulate import render, simulate

    if not settings.sandbox:
        raise StartupError(
            "simulate works in sandbox mode only: WHATSAPP_ACCESS_TOKEN is set, so the simulated "
            "message would be answered to a real phone number"
        )
    redis_url = resolve_redis_url(settings)
    answer = asyncio.run(  # a SimulateError is a StartupError: one line and its exit code
        simulate(
            settings,
            redis_url,
            text=args.text,
            image=args.image,
            url=args.url,
            wait_seconds=args.timeout,
            sender=args.sender,
            button=args.button,
            list_row=args.list_row,
            location=args.location,
        )
    )
    if not answer:
        print("(no reply: the handler answered nothing)")
    for sent in answer:
        print(render(sent))
    return EXIT_OK


def _coordinates(value: str) -> tuple[float, float]:
    """``LAT,LON`` in degrees."""
    try:
        latitude, longitude = (float(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not LAT,LON (e.g. 38.7223,-9.1393)") from None
    if not (abs(latitude) <= 90 and abs(longitude) <= 180):
        raise argparse.ArgumentTypeError(f"{value!r} is not a place on Earth")
    return latitude, longitude


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.check import run_checks

    failed = False
    for result in run_checks(settings):
        print(f"{result.status:<5} {result.name:<14} {result.detail}")
        failed = failed or result.status == "FAIL"
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    import json

    import redis

    from daemon.store import deadletters as dlq

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
                line = f"{letter.id}  {stamp}  {letter.stage:<11} {what['kind']}={ids}  {reason.get('type')}{code}"
                print(line.encode("utf-8", "backslashreplace").decode("utf-8"))  # ids may be invalid Unicode
            if not args.json:
                print(f"{len(letters)} dead letter(s)")
        elif args.action == "show":
            letter = dlq.find(client, args.id)
            print(
                json.dumps({**letter.summary(), "reason": letter.reason, "message": letter.message}, indent=2)
            )
        elif args.action == "replay":
            if args.all == (args.id is not None):
                raise StartupError("dlq replay takes one ID, or --all")
            if not args.all:
                letter = dlq.find(client, args.id)
                try:
                    dlq.replay(client, letter, resend_unknown=args.resend_unknown)
                except dlq.MayHaveBeenDelivered as error:
                    raise StartupError(str(error), EXIT_FAILURE) from None
                print(f"replayed {letter.id} ({letter.stage})")
                return EXIT_OK
            skipped = 0
            for letter in dlq.all_letters(client):
                if letter.may_have_been_delivered and not args.resend_unknown:
                    skipped += 1
                    print(f"skipped {letter.id} ({letter.stage}): may have been delivered")
                    continue
                dlq.replay(client, letter, resend_unknown=args.resend_unknown)
                print(f"replayed {letter.id} ({letter.stage})")
            if skipped:
                print(
                    f"{skipped} skipped: their sends may have been delivered; --resend-unknown sends them again"
                )
        elif args.action == "purge":
            older = None if args.all else settings.dlq_retention_days * 86_400
            print(f"purged {dlq.purge(client, older_than_seconds=older)} dead letter(s)")
    except dlq.NotFound as error:
        raise StartupError(str(error), EXIT_FAILURE) from None
    except redis.RedisError as error:
        raise StartupError(f"Redis: {error}", EXIT_REDIS) from None
    finally:
        client.close()
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (exit 2), like every other wapipe error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _positive(value: str) -> float:
    number = float(value)
    if not 0 < number <= 3600:
        raise ValueError(value)
    return number


_positive.__name__ = "seconds (0 to 3600)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wapipe", description="WhatsApp Cloud API webhook pipeline.")
    parser.add_argument("--version", action="version", version=f"wapipe {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("web", help="serve the webhook, health, readiness and metrics on $PORT")
    commands.add_parser("worker", help="run the pipeline's actors (worker processes × threads)")
    commands.add_parser("run", help="one machine: embedded Redis (unless REDIS_URL), web and worker")
    commands.add_parser("check", help="check configuration, Redis, the Graph API token, directories, handler")
    sim = commands.add_parser("simulate", help="sandbox: post a signed test message, print what was answered")
    what = sim.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="send a text message")
    what.add_argument("--image", type=Path, help="upload this image to the emulator and send it")
    what.add_argument(
        "--button", metavar="ID", help="press the reply button ID of the last message offering it"
    )
    what.add_argument("--list-row", metavar="ID", help="pick the list row ID of the last message offering it")
    what.add_argument("--location", type=_coordinates, metavar="LAT,LON", help="share a location")
    sim.add_argument("--from", dest="sender", default=None, help="the simulated user's number (digits)")
    sim.add_argument("--url", help="webhook URL (default: the address the web recorded in Redis)")
    sim.add_argument(
        "--timeout", type=_positive, default=10.0, help="seconds to wait for the answer (default 10)"
    )
    dead = commands.add_parser("dlq", help="list, show, replay or purge dead letters")
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every dead letter: id, time, stage, what, reason")
    listing.add_argument("--json", action="store_true", help="as JSON")
    actions.add_parser("show", help="one dead letter in full").add_argument("id")
    replaying = actions.add_parser("replay", help="run a dead letter again from its stage, once")
    replaying.add_argument("id", nargs="?")
    replaying.add_argument("--all", action="store_true", help="replay every dead letter")
    replaying.add_argument(
        "--resend-unknown",
        action="store_true",
        help="also replay sends whose outcome is unknown: the user may receive them twice",
    )
    purging = actions.add_parser("purge", help="delete dead letters older than WAPIPE_DLQ_RETENTION_DAYS")
    purging.add_argument("--all", action="store_true", help="delete every dead letter")
    sending = commands.add_parser("send", help="send a text or template to a user (business-initiated)")
    sending.add_argument("phone_number_id", metavar="PHONE_NUMBER_ID")
    sending.add_argument("user", metavar="USER", help="the user's wa_id (digits) or business-scoped id")
    sending.add_argument("--text", help="a text (sent as the template instead outside the 24-hour window)")
    sending.add_argument("--template", metavar="NAME", help="an approved template (no parameters)")
    sending.add_argument("--language", default="en_US", help="the template's language (default en_US)")
    sending.add_argument("--key", help="an idempotency key: a second send with it sends nothing")
    sending.add_argument(
        "--wait",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the outcome (default 30; 0: only queue it)",
    )
    forgetting = commands.add_parser("forget", help="erase everything kept of one user (erasure requests)")
    forgetting.add_argument("phone_number_id", metavar="PHONE_NUMBER_ID")
    forgetting.add_argument("user", metavar="USER", help="the user's wa_id (digits) or business-scoped id")
    tracing = commands.add_parser(
        "trace", help="one message's journey: stages, attempts, media, replies, statuses"
    )
    tracing.add_argument(
        "message_id", metavar="WAMID", help="an inbound message's id, a reply's id, or send:KEY"
    )
    tracing.add_argument("--json", action="store_true", help="print it as JSON")
    talk = commands.add_parser("conversation", help="show or reset one user's conversation (shows content)")
    talk_actions = talk.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("show", "state, variables, window and history, as JSON"),
        ("reset", "forget state, variables, history"),
    ):
        one = talk_actions.add_parser(action, help=text)
        one.add_argument("phone_number_id", metavar="PHONE_NUMBER_ID")
        one.add_argument("user", metavar="USER", help="the user's wa_id (digits) or business-scoped id")
    return parser


def _seconds(text: str) -> float:
    """A ``--wait``: a finite number of seconds, 0 or more."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    """Queue a business-initiated message (a text, or a template) to one user, then say what became
    of it: exit 0 once it was sent, 1 when nothing was (refused, dead-lettered, still queued)."""
    import uuid

    import redis

    from daemon import outgoing
    from daemon.messages import MessageInvalid, Template, Text

    if not args.text and not args.template:
        raise StartupError("send takes --text, --template, or both (the template goes outside the window)")
    try:
        template = Template(args.template, args.language) if args.template else None
        built = Text(args.text, outside_window=template) if args.text else template
    except MessageInvalid as error:
        raise StartupError(str(error)) from None
    assert built is not None  # the parser requires --text or --template
    request = {
        "phone_number_id": args.phone_number_id,
        "to": args.user,
        "idempotency_key": str(uuid.uuid4()) if args.key is None else args.key,
        "messages": [built.to_body()],
    }
    try:
        asked = outgoing.outgoing(request, settings)
    except outgoing.RequestRefused as error:
        raise StartupError(str(error)) from None
    client = redis.Redis.from_url(resolve_redis_url(settings), socket_timeout=10)
    try:
        verdict = outgoing.enqueue(client, asked, settings)
        if verdict is outgoing.Accepted.CONFLICT:
            print(f"{asked.key} was used for another request: nothing sent", file=sys.stderr)
            return EXIT_FAILURE
        print(f"{'already queued' if verdict is outgoing.Accepted.REPLAYED else 'queued'} {asked.key}")
        if args.wait == 0:
            return EXIT_OK
        messages = _outcome(client, asked.phone_number_id, asked.key, args.wait)
    except redis.RedisError as error:
        raise StartupError(
            f"Redis: {type(error).__name__} (the send may or may not be queued)", EXIT_REDIS
        ) from None
    finally:
        client.close()
    for message in messages:
        print(f"  message {message['index']}: {outgoing.describe(message)}")
    if any(message["state"] == "sent" for message in messages):
        return EXIT_OK
    if not all(m["state"] in outgoing.FINAL for m in messages):
        print(
            f"nothing sent within {args.wait:g} s: `wapipe trace send:{asked.key}` follows it",
            file=sys.stderr,
        )
    return EXIT_FAILURE


def _outcome(client: Any, number: str, key: str, wait: float) -> list[dict[str, Any]]:
    """Each message's outcome once all are final, or as they are after ``wait`` seconds."""
    from daemon import outgoing

    deadline = time.monotonic() + wait
    while True:
        found = outgoing.status(client, number, key)
        messages: list[dict[str, Any]] = [] if found is None else found["messages"]
        if (messages and all(m["state"] in outgoing.FINAL for m in messages)) or time.monotonic() >= deadline:
            return messages
        time.sleep(0.2)


def cmd_forget(settings: Settings, args: argparse.Namespace) -> int:
    """Erase everything kept of one user (an erasure request)."""
    import redis

    from daemon.store.erasure import forget, rewrite_files

    client = redis.Redis.from_url(resolve_redis_url(settings), socket_timeout=10)
    try:
        erased = forget(client, args.phone_number_id, args.user, settings.media_dir)
        print(
            f"forgot {args.user}: {erased.keys} keys, {erased.dead_letters} dead letters, "
            f"{erased.outbox_entries} outbox entries, {erased.media_files} media files"
        )
        rewritten = rewrite_files(client)
    finally:
        client.close()
    for line in rewritten.lines:
        print(f"Redis's {line}" if not line.startswith("Redis") else line)
    if not rewritten.complete:
        print(
            "Redis's files may still hold copies of the user until Redis rewrites them "
            "(its replicas and backups keep theirs too)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def cmd_trace(settings: Settings, args: argparse.Namespace) -> int:
    """Print what happened to one message, from its webhook to its replies' delivery."""
    import json

    import redis

    from daemon.store.trace import trace

    client = redis.Redis.from_url(resolve_redis_url(settings), socket_timeout=10)
    try:
        found = trace(client, args.message_id)
    finally:
        client.close()
    if not found.found:
        raise StartupError(
            f"nothing is known of {args.message_id} (never received, or expired)", EXIT_FAILURE
        )
    if args.json:
        print(json.dumps(found.to_json(), indent=2))
    else:
        print("\n".join(found.lines()))
    return EXIT_OK


def cmd_conversation(settings: Settings, args: argparse.Namespace) -> int:
    """Show or reset one user's conversation (a deliberate view of content, for support staff)."""
    import json

    import redis

    from daemon.store.conversations import Conversations

    client = redis.Redis.from_url(resolve_redis_url(settings), socket_timeout=10)
    try:
        conversations = Conversations(
            client,
            history_messages=settings.history_messages,
            history_characters=0,
            ttl_seconds=settings.conversation_ttl_seconds,
            turn_ttl_seconds=settings.message_dedup_ttl_seconds,
        )
        if args.action == "reset":
            had = conversations.reset(args.phone_number_id, args.user)
            print("reset" if had else "no conversation to reset")
            return EXIT_OK
        talk = conversations.load(args.phone_number_id, args.user)
        shown = {
            "phone_number_id": talk.phone_number_id,
            "user": talk.user,
            "state": talk.state,
            "variables": talk.variables,
            "last_inbound_at": talk.last_inbound_at,
            "window_open": talk.window_open(time.time()),
            "turns": talk.version,
            "history": [entry.to_json() for entry in talk.history],
        }
        print(json.dumps(shown, indent=2, ensure_ascii=False))
        return EXIT_OK
    finally:
        client.close()


COMMANDS = {
    "web": cmd_web,
    "worker": cmd_worker,
    "run": cmd_run,
    "simulate": cmd_simulate,
    "check": cmd_check,
    "dlq": cmd_dlq,
    "conversation": cmd_conversation,
    "send": cmd_send,
    "forget": cmd_forget,
    "trace": cmd_trace,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.load()
    except ConfigError as error:
        print(f"wapipe: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(settings.log_level, settings.log_format)
    try:
        return COMMANDS[args.command](settings, args)
    except StartupError as error:
        print(f"wapipe {args.command}: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return EXIT_OK
