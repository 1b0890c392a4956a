"""`wapipe forget`: after a user's texts, an image, a business send and a dead-lettered reply,
no key, value or file of that user is left (checked by scanning all of Redis and the media
directory), and another user's records are untouched."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.pipeline_helpers import dead_letters, drained, post_webhook
from tests.support.fake_graph import FakeGraph, graph_error
from tests.support.meta import envelope, text_envelope
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_for
from tests.test_send import TOKEN, post_send, request, text

NUMBER = "620000000000001"
USER = "447700900321"
OTHER = "447700900654"


def everything(rclient: redis.Redis) -> str:
    """Every key of Redis and every value in it, as one text to search."""
    parts: list[str] = []
    for raw in rclient.scan_iter(count=500):
        key = raw.decode(errors="replace")
        kind = rclient.type(raw).decode()
        parts.append(key)
        if kind == "string":
            parts.append(str(rclient.get(raw)))
        elif kind == "hash":
            parts.append(str(rclient.hgetall(raw)))
        elif kind == "list":
            parts.append(str(rclient.lrange(raw, 0, -1)))
        elif kind == "set":
            parts.append(str(rclient.smembers(raw)))
        elif kind == "zset":
            parts.append(str(rclient.zrange(raw, 0, -1, withscores=True)))
    return "\n".join(parts)


def redis_files(server: RedisServer) -> bytes:
    """Everything in the Redis data directory's files (its append-only files, any snapshot)."""
    return b"".join(path.read_bytes() for path in sorted(server.directory.rglob("*")) if path.is_file())


def test_forget_leaves_nothing_of_the_user(
    pipeline: Callable[..., dict[str, Any]],
    fake_graph: FakeGraph,
    rclient: redis.Redis,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    """Texts, a stored image, a business send, a dead-lettered reply, a conversation bot's state:
    all gone after `wapipe forget`, from Redis's own files too (it asks Redis to rewrite its
    append-only file, which kept 8 copies of the texts before); the other user's conversation and
    reply records remain."""
    (tmp_path / "memory_bot.py").write_text(
        "from daemon.messages import Text\n"
        "def handle(message, conversation):\n"
        "    conversation.variables['said'] = message.text\n"
        "    return [Text('noted', reply_to=message.id)]\n",
        encoding="utf-8",
    )
    fake_graph.add_media("forget-img", b"user's photo bytes")
    stack = pipeline(
        WAPIPE_HANDLER="memory_bot:handle", WAPIPE_SEND_TOKEN=TOKEN, WHATSAPP_MEDIA_HOSTS="127.0.0.1"
    )
    url = stack["url"]
    now = str(int(time.time()))
    image = {"id": "wamid.F2", "from": USER, "timestamp": now, "type": "image", "image": {"id": "forget-img"}}
    assert post_webhook(url, text_envelope("wamid.F1", "my secret address", sender=USER)) == 200
    assert post_webhook(url, envelope([image])) == 200
    assert post_webhook(url, text_envelope("wamid.O1", "hello", sender=OTHER)) == 200
    wait_for(lambda: drained(rclient) and len(fake_graph.sends()) >= 3, timeout=30, what="three replies")
    fake_graph.script("send", graph_error(131026, 400, "Message undeliverable"))
    assert post_webhook(url, text_envelope("wamid.F3", "another secret", sender=USER)) == 200
    assert post_send(url, request(USER, "forget-key", text("Your order shipped")))[0] == 202
    wait_for(lambda: drained(rclient) and dead_letters(rclient), timeout=30, what="a dead letter")
    media_files = [p for p in (tmp_path / "data" / "media").rglob("*") if p.is_file()]
    assert media_files  # the image was stored
    before = everything(rclient)
    assert USER in before
    assert "wamid.F1" in before
    wait_for(lambda: b"my secret address" in redis_files(redis_server), timeout=10, what="the AOF written")

    forgot = subprocess.run(
        [sys.executable, "-m", "daemon", "forget", NUMBER, USER],
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert forgot.returncode == 0, forgot.stderr
    assert forgot.stdout.startswith(f"forgot {USER}: ")
    assert "1 dead letters" in forgot.stdout
    assert "1 media files" in forgot.stdout
    assert "Redis's append-only file: rewritten" in forgot.stdout
    on_disk = redis_files(redis_server)
    for trace in (b"my secret address", b"another secret", USER.encode(), b"forget-key"):
        assert trace not in on_disk, trace
    assert b"wamid.O1" in on_disk  # the other user's records are still there

    after = everything(rclient)
    for trace in (USER, "wamid.F1", "wamid.F2", "wamid.F3", "forget-key", "secret"):
        assert trace not in after, trace
    assert not [p for p in (tmp_path / "data" / "media").rglob("*") if p.is_file()]
    assert OTHER in after
    assert "wamid.O1" in after
    shown = json.loads(
        subprocess.run(
            [sys.executable, "-m", "daemon", "conversation", "show", NUMBER, OTHER],
            env=stack["env"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    )
    assert shown["variables"] == {"said": "hello"}


def test_forget_says_so_when_redis_refuses_to_rewrite_its_files(
    pipeline: Callable[..., dict[str, Any]], rclient: redis.Redis, redis_server: RedisServer
) -> None:
    """A Redis that refuses BGREWRITEAOF (a managed service's ACL): the keys are removed, the
    refusal is printed with what it means (its files, replicas and backups keep copies), exit 1."""
    stack = pipeline(worker=False)
    assert post_webhook(stack["url"], text_envelope("wamid.R1", "refused secret", sender=USER)) == 200
    rclient.acl_setuser("eraser", enabled=True, passwords=["+eraser-pw"], keys=["*"], channels=["*"],
                        commands=["+@all", "-bgrewriteaof"])  # fmt: skip
    try:
        limited = redis_server.url.replace("redis://", "redis://eraser:eraser-pw@")
        forgot = subprocess.run(
            [sys.executable, "-m", "daemon", "forget", NUMBER, USER],
            env=stack["env"] | {"REDIS_URL": limited},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        rclient.acl_deluser("eraser")
    assert forgot.returncode == 1, forgot.stderr
    assert forgot.stdout.startswith(f"forgot {USER}: ")
    assert "Redis's append-only file: Redis refused BGREWRITEAOF" in forgot.stdout
    assert "replicas and backups" in forgot.stderr
