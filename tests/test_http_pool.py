"""The worker's keep-alive connection pool (``daemon.http_pool``), against the fake Graph API."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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


TLS = Path(__file__).parent / "fixtures" / "tls"


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    peers: list[tuple[str, int]] = []

    def do_GET(self) -> None:
        self.peers.append(self.client_address)
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def tls_server() -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """An HTTPS server on loopback with the self-signed test certificate (tests/fixtures/tls)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(TLS / "cert.pem", TLS / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    peers: list[tuple[str, int]] = []
    _Answer.peers = peers
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/", peers
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_https_with_a_trusted_certificate_keeps_its_connection(
    tls_server: tuple[str, list[tuple[str, int]]],
) -> None:
    """Over TLS (certificate checked against the given CA) two requests share one connection."""
    url, peers = tls_server
    pool = HTTPPool(timeout=2.0, ssl_context=ssl.create_default_context(cafile=str(TLS / "cert.pem")))
    try:
        for _ in range(2):
            with pool.request("GET", url) as response:
                assert json.loads(response.read()) == {"ok": True}
    finally:
        pool.close()
    assert len(peers) == 2
    assert peers[0] == peers[1]


def test_https_with_an_untrusted_certificate_sends_nothing(
    pool: HTTPPool, tls_server: tuple[str, list[tuple[str, int]]]
) -> None:
    """The default context verifies certificates: a self-signed one is ConnectFailed, no request made."""
    url, peers = tls_server
    with pytest.raises(ConnectFailed, match="SSLCertVerificationError"), pool.request("GET", url):
        pass
    assert peers == []
