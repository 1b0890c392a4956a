"""The worker runtime's Redis: one connection per worker thread, all closed with the runtime."""

from __future__ import annotations

import threading

import redis

from actors import runtime
from daemon.config import Settings
from daemon.graph import GraphClient
from tests.conftest import ACCESS_TOKEN, APP_SECRET, VERIFY_TOKEN
from tests.support.fake_graph import FakeGraph
from tests.support.waiting import wait_for


def _connection_ids(client: redis.Redis) -> set[int]:
    return {int(entry["id"]) for entry in client.client_list()}


def test_each_thread_talks_to_redis_on_its_own_connection(
    redis_url: str, rclient: redis.Redis, fake_graph: FakeGraph
) -> None:
    """Two threads get two connections; a thread keeps its one across commands, queue and scripts;
    closing the runtime closes them all."""
    settings = Settings.from_env(
        {
            "WHATSAPP_APP_SECRET": APP_SECRET,
            "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
            "WHATSAPP_ACCESS_TOKEN": ACCESS_TOKEN,
            "WHATSAPP_GRAPH_URL": fake_graph.url,
        }
    )
    rt = runtime.Runtime(
        settings=settings,
        redis_url=redis_url,
        graph=GraphClient(settings),
        handler=lambda message: [],
        loop=None,  # type: ignore[arg-type]  # no async handler here
    )
    seen: dict[str, list[int]] = {}

    def work(name: str) -> None:
        ids = [int(rt.redis.client_id())]
        rt.script("return redis.call('INCR', KEYS[1])")(keys=["wapipe:test:counter"])
        assert rt.limiter is rt.limiter
        assert rt.queue is rt.queue
        ids.append(int(rt.redis.client_id()))
        seen[name] = ids

    threads = [threading.Thread(target=work, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert set(seen) == {"a", "b"}
    assert seen["a"][0] == seen["a"][1]
    assert seen["b"][0] == seen["b"][1]
    assert seen["a"][0] != seen["b"][0]
    assert rclient.get("wapipe:test:counter") == b"2"
    opened = {seen["a"][0], seen["b"][0]}
    assert opened <= _connection_ids(rclient)
    rt.close()
    wait_for(lambda: not opened & _connection_ids(rclient), timeout=5, what="connections closed")
