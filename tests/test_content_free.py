"""No user content and no secret in any content-free output: logs (ours and every library's, at
DEBUG, text and JSON), metrics, health endpoints, `dlq list`, error messages — with messages that
succeed, fail in a bot's handler, are refused by the Graph API, forged or badly signed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from daemon.pipeline import VERIFY, Webhook
from daemon.pipeline import message as pipeline_message
from daemon.store.queues import prepare
from tests.conftest import ACCESS_TOKEN, APP_SECRET, VERIFY_TOKEN
from tests.pipeline_helpers import dead_letters, drained, post_webhook, scrape
from tests.support.fake_graph import FakeGraph, b64_sha256, graph_error, media_bytes
from tests.support.meta import envelope
from tests.support.waiting import wait_for

USER = "15550009876"
NAME = "Secret Name Zeta"
TEXTS = ("SECRET-TEXT-ALPHA", "EXPLODE-SECRET-BETA", "SECRET-GAMMA", "SECRET-CAPTION", "SECRET-EPSILON")
FORGED = "SECRET-DELTA"
NEVER = (*TEXTS, FORGED, NAME, USER, APP_SECRET, ACCESS_TOKEN, VERIFY_TOKEN)

#: A bot whose handler fails on some messages with an exception quoting the user's text, name and number.
LEAKY_BOT = """
from daemon.handler import default_handler

def handle(message):
    if message.text and message.text.startswith("EXPLODE"):
        raise ValueError(f"cannot handle {message.text} from {message.contact_name} {message.from_}")
    return default_handler(message)
"""


def message(message_id: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"from": USER, "id": message_id, "timestamp": str(int(time.time())), "type": kind, kind: body}


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as error:
        return str(error.read().decode())


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_content_free_outputs_hold_no_content_and_no_secret(
    pipeline: Callable[..., dict[str, Any]],
    fake_graph: FakeGraph,
    rclient: redis.Redis,
    tmp_path: Path,
    log_format: str,
) -> None:
    """Every kind of run, then a grep of every content-free output for the texts, the name, the
    number and the secrets; the deliberate view (`dlq show`) does show the content."""
    (tmp_path / "leaky_bot.py").write_text(LEAKY_BOT, encoding="utf-8")
    fake_graph.add_media("4242")
    stack = pipeline(
        WAPIPE_HANDLER="leaky_bot:handle",
        WAPIPE_LOG_FORMAT=log_format,
        WAPIPE_RETRY_MAX="1",
        WHATSAPP_MEDIA_HOSTS="127.0.0.1",
    )
    url, env = stack["url"], stack["env"]
    contacts = [{"profile": {"name": NAME}, "wa_id": USER}]
    fake_graph.script("send", graph_error(131047, 400, "Re-engagement message"))  # SECRET-GAMMA's send
    posts = [
        [message("wamid.G", "text", {"body": TEXTS[2]})],
        [message("wamid.A", "text", {"body": TEXTS[0]})],
        [message("wamid.B", "text", {"body": TEXTS[1]})],
        [
            message(
                "wamid.I",
                "image",
                {
                    "id": "4242",
                    "mime_type": "image/jpeg",
                    "caption": TEXTS[3],
                    "sha256": b64_sha256(media_bytes("4242")),
                },
            )
        ],
    ]
    for messages in posts:
        assert post_webhook(url, envelope(messages, contacts=contacts)) == 200
        wait_for(lambda: drained(rclient), timeout=30, what="the message handled")
    assert (
        post_webhook(url, envelope([message("wamid.E", "text", {"body": TEXTS[4]})]), secret="wrong") == 401
    )
    _, keys, args = prepare(pipeline_message(VERIFY, Webhook(json.dumps({"x": FORGED}), "sha256=00", 0.0)))
    rclient.hset(keys[1], args[0], args[1])
    rclient.rpush(keys[0], args[0])
    for token in (VERIFY_TOKEN, "wrong-token"):
        get(f"{url}/webhook?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=123")
    wait_for(lambda: drained(rclient) and len(dead_letters(rclient)) == 3, timeout=30, what="3 dead letters")
    assert len(fake_graph.sends()) == 3  # ALPHA and the image answered; GAMMA refused by the Graph API

    outputs = {
        "web log": stack["web"].output(),
        "worker log": stack["worker"].output(),
        "web metrics": scrape(f"{url}/metrics"),
        "worker metrics": scrape(f"http://127.0.0.1:{env['WAPIPE_METRICS_PORT']}/metrics"),
        "health": get(f"{url}/healthz") + get(f"{url}/readyz"),
        "dlq list": run_cli(env, "dlq", "list").stdout,
        "dlq list --json": run_cli(env, "dlq", "list", "--json").stdout,
        "error message": run_cli(env, "dlq", "show", "no-such-letter").stderr,
    }
    assert "EnvelopeRejected" in outputs["dlq list"]
    assert "GraphRejected" in outputs["dlq list"]
    assert "ValueError" in outputs["worker log"]  # the failure is reported, by its type
    assert "leaky_bot.py" in outputs["worker log"]  # and where it happened
    for name, text in outputs.items():
        for secret in NEVER:
            assert secret not in text, f"{secret!r} in the {name}"
    shown = "".join(run_cli(env, "dlq", "show", letter["message"]["options"]["redis_message_id"]).stdout
                    for letter in dead_letters(rclient))  # fmt: skip
    assert TEXTS[1] in shown  # the deliberate view of a dead letter shows what it holds


def test_aiohttp_error_lines_keep_the_exception_type_not_its_message() -> None:
    """aiohttp logs a malformed request with the exception, whose message quotes the request's
    bytes (the tail of a body: a text's words, a number): the line keeps the type and the frames."""
    import io
    import logging
    import os

    import aiohttp
    from aiohttp.http_exceptions import BadStatusLine

    from daemon import logs

    stream = io.StringIO()
    logs.configure("DEBUG", "text", stream)
    quoted = "Invalid method encountered: b'LEAKME 447700900123'"  # the frame's source line shows no bytes
    try:
        raise BadStatusLine(quoted)
    except BadStatusLine:
        record = logging.LogRecord(
            "aiohttp.server",
            logging.ERROR,
            os.path.join(os.path.dirname(aiohttp.__file__), "web_protocol.py"),
            1,
            "Error handling request from %s",
            ("127.0.0.1",),
            sys.exc_info(),
        )
    logging.getLogger("aiohttp.server").handle(record)
    written = stream.getvalue()
    assert "Error handling request from 127.0.0.1: BadStatusLine" in written
    assert "LEAKME" not in written
    assert "447700900123" not in written
