"""Pooled keep-alive HTTP/1.1 connections on the standard library's ``http.client``, used by the
Graph API client straight from Dramatiq's worker threads.

Why not aiohttp, which the worker used before: its requests had to be awaited on the process's
one event-loop thread, and each hand-off there and back, plus aiohttp's own machinery, cost more
CPU than the whole request does here. Measured on the 2-core benchmark machine, client CPU per
``POST`` answered by a local server: http.client 92 µs, urllib3 192 µs, aiohttp awaited from a
worker thread 210–240 µs. The Graph API calls were 60 % of a worker process's CPU at full load.

A connection is taken from the pool for one request and its response, and put back only when the
response was read to its end and the server keeps the connection open; any other exit (an error,
a body left unread) closes it. A pooled connection idle longer than ``idle_seconds``, or one the
server has closed or written to meanwhile, is replaced before use, so a request is not written
into a connection the server already gave up.

Errors tell the caller whether anything may have reached the server: :class:`ConnectFailed`
means nothing was sent (no connection, refused, DNS, TLS handshake, connect timeout); any other
``OSError`` or ``http.client.HTTPException`` came after the request began to go out.

``timeout`` bounds the connection and each read and write (not the whole exchange): a small JSON
answer that stays silent longer than ``timeout`` fails with ``TimeoutError``.
"""

from __future__ import annotations

import http.client
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import urlsplit

#: aiohttp's keep-alive default: a connection idle longer than this is not reused.
IDLE_SECONDS = 15.0
#: Idle connections kept per origin (more than a worker process has threads).
MAX_IDLE_PER_ORIGIN = 64

Origin = tuple[str, str, int]


#: Characters http.client refuses in a request line (and non-ASCII, which it cannot encode).
_UNSENDABLE = re.compile(r"[\x00-\x20\x7f-\U0010ffff]")


class ConnectFailed(Exception):
    """No connection could be made: nothing was sent."""


def _dropped(sock: socket.socket | None) -> bool:
    """True when an idle connection's socket is readable: the server closed it (or broke protocol).

    ``poll``, not ``select``: a process with over 1,024 open files would fail every check.
    """
    if sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class HTTPPool:
    """Keep-alive connections per origin (scheme, host, port), shared by a process's threads."""

    def __init__(
        self,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        idle_seconds: float = IDLE_SECONDS,
        max_idle_per_origin: int = MAX_IDLE_PER_ORIGIN,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.idle_seconds = idle_seconds
        self.max_idle = max_idle_per_origin
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[tuple[http.client.HTTPConnection, float]]] = {}
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Iterator[http.client.HTTPResponse]:
        """Send one request and yield its response (read it inside the ``with``).

        Raises:
            ConnectFailed: no connection could be made; nothing was sent.
            OSError, http.client.HTTPException: after the request began to go out.
            ValueError: ``url`` is not an absolute http(s) URL.
            http.client.InvalidURL: ``url`` cannot be sent as it is (nothing was connected).
        """
        if _UNSENDABLE.search(url):
            # http.client would refuse it only after connecting: refuse it before.
            raise http.client.InvalidURL("the URL holds a space, a control or a non-ASCII character")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an absolute http(s) URL: {parts.scheme}://{parts.hostname}")
        origin: Origin = (
            parts.scheme,
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
        )
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = self._checkout(origin)
        response: http.client.HTTPResponse | None = None
        reusable = False
        try:
            connection.request(method, target, body=body, headers={**self.headers, **(headers or {})})
            response = connection.getresponse()
            yield response
            reusable = response.isclosed() and connection.sock is not None
        finally:
            if reusable:
                self._checkin(origin, connection)
            else:
                if response is not None:
                    response.close()  # its buffered reader holds the socket open otherwise
                connection.close()

    def close(self) -> None:
        """Close every idle connection; later requests open none to keep."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection, _ in connections:
                connection.close()

    def _checkout(self, origin: Origin) -> http.client.HTTPConnection:
        now = time.monotonic()
        while True:
            with self._lock:
                stack = self._idle.get(origin)
                connection, last_used = stack.pop() if stack else (None, 0.0)
            if connection is None:
                break
            if now - last_used <= self.idle_seconds and not _dropped(connection.sock):
                return connection
            connection.close()
        scheme, host, port = origin
        if scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._tls())
        else:
            connection = http.client.HTTPConnection(host, port, timeout=self.timeout)
        try:
            connection.connect()
        except OSError as error:
            connection.close()
            raise ConnectFailed(f"{type(error).__name__}: cannot connect to {host}:{port}") from error
        return connection

    def _tls(self) -> ssl.SSLContext:
        """The TLS context (certificates verified), made at the first https connection."""
        with self._lock:
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            return self._ssl_context

    def _checkin(self, origin: Origin, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            stack = self._idle.setdefault(origin, [])
            if not self._closed and len(stack) < self.max_idle:
                stack.append((connection, time.monotonic()))
                return
        connection.close()
