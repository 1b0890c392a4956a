"""The worker's keep-alive connection pool (``daemon.http_pool``), against the fake Graph API."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

from daemon.http_pool import ConnectFailed, HTTPPool
from tests.support.fake_graph import FakeGraph
from tests.support.waiting import free_port

READ = json.dumps({"messaging_product": "whatsapp", "status": "read", "message_id": "m"}).encode()


@pytest.fixture
def pool() -> Iterator[HTTPPool]:
    pool = HTTPPool(timeout=2.0)
    try:
        yield pool
    finally:
        pool.close()


def post(pool: HTTPPool, graph: FakeGraph, read_body: bool = True) -> int:
    with pool.request(
        "POST", f"{graph.url}/v25.0/1/messages", body=READ, headers={"Content-Type": "application/json"}
    ) as response:
        if read_body:
            response.read()
        return response.status


def test_a_connection_the_server_closed_while_idle_is_replaced_before_use(
    pool: HTTPPool, fake_graph: FakeGraph
) -> None:
    """The server closes the pooled connection between two requests: the second one goes out on a
    new connection and succeeds (not written into the dead one and reported as a lost answer)."""
    assert post(pool, fake_graph) == 200
    fake_graph.refuse_connections()
    fake_graph.accept_connections()
    assert post(pool, fake_graph) == 200
    first, second = (r.peer for r in fake_graph.of_kind("read"))
    assert first != second


def test_an_unread_body_closes_the_connection_instead_of_pooling_it(
    pool: HTTPPool, fake_graph: FakeGraph
) -> None:
    """A response left unread cannot share its connection: the next request opens another."""
    assert post(pool, fake_graph, read_body=False) == 200
    assert post(pool, fake_graph) == 200
    assert post(pool, fake_graph) == 200
    peers = [r.peer for r in fake_graph.of_kind("read")]
    assert peers[0] != peers[1]
    assert peers[1] == peers[2]


def test_threads_get_their_own_connections_and_return_them(pool: HTTPPool, fake_graph: FakeGraph) -> None:
    """Eight threads posting at once each hold a connection; afterwards at most eight stay open."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        try:
            barrier.wait(timeout=5)
            for _ in range(10):
                assert post(pool, fake_graph) == 200
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(fake_graph.of_kind("read")) == 80
    assert 1 <= len({r.peer for r in fake_graph.of_kind("read")}) <= 8


def test_no_listener_is_connect_failed(pool: HTTPPool) -> None:
    """A refused connection is ConnectFailed: the caller knows nothing was sent."""
    with pytest.raises(ConnectFailed), pool.request("GET", f"http://127.0.0.1:{free_port()}/"):
        pass


def test_a_silent_server_times_out_after_the_request_went_out(pool: HTTPPool) -> None:
    """Connected but never answered: TimeoutError (an OSError, not ConnectFailed), after ``timeout``."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    quick = HTTPPool(timeout=0.3)
    try:
        with pytest.raises(TimeoutError), quick.request("GET", f"http://127.0.0.1:{port}/"):
            pass
    finally:
        quick.close()
        listener.close()


def test_only_absolute_http_urls(pool: HTTPPool) -> None:
    """A URL without an http(s) scheme and host is refused before any connection."""
    with pytest.raises(ValueError, match="not an absolute"), pool.request("GET", "ftp://example.com/x"):
        pass
