"""Synchronise by polling a condition with a deadline, never by sleeping and hoping."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline."""


def wait_for(
    condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last:
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"timed out after {timeout} s waiting for {what or condition!r} (last: {last!r})"
            )
        time.sleep(interval)
        last = condition()
    return last


async def async_wait_for(
    condition: Callable[[], Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    deadline = time.monotonic() + timeout
    last = await condition()
    while not last:
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"timed out after {timeout} s waiting for {what or condition!r} (last: {last!r})"
            )
        await asyncio.sleep(interval)
        last = await condition()
    return last


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
