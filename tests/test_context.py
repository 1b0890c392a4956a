"""The worker's resources: one Redis connection per worker thread, all closed with the resources."""

from __future__ import annotations

import threading
from pathlib import Path

import redis

from actors.context import Resources
from tests.support.fake_graph import FakeGraph
from tests.support.stages import resources
from tests.support.waiting import wait_for


def _connection_ids(client: redis.Redis) -> set[int]:
    return {int(entry["id"]) for entry in client.client_list()}


def test_each_thread_talks_to_redis_on_its_own_connection(
    redis_url: str, rclient: redis.Redis, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    """Two threads get two connections; a thread keeps its one across commands, queue and scripts;
    closing the resources closes them all."""
    with resources(redis_url, fake_graph.url, tmp_path) as worker:
        _threads_use_their_own(worker, rclient)


def _threads_use_their_own(worker: Resources, rclient: redis.Redis) -> None:
    seen: dict[str, list[int]] = {}

    def work(name: str) -> None:
        store = worker.context("m", {}).store
        ids = [int(store.client.client_id())]
        store.client.register_script("return redis.call('INCR', KEYS[1])")(keys=["wapipe:test:counter"])
        assert worker.store is store
        assert store.limiter is worker.context("n", {}).store.limiter
        ids.append(int(worker.store.client.client_id()))
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
    worker.close()
    wait_for(lambda: not opened & _connection_ids(rclient), timeout=5, what="connections closed")
