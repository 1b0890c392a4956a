"""``wapipe run``: one machine, one command.

Starts the embedded Redis when ``REDIS_URL`` is unset, then ``wapipe web`` and ``wapipe worker``
with ``REDIS_URL`` passed explicitly (in sandbox mode the worker finds the web's emulator through
Redis, as under any Procfile runner), prefixes their output, and stops everything — Redis last —
on Ctrl-C or SIGTERM. A child that dies is reported and the others are stopped, rather than
leaving half a system running; a child's configuration or Redis error code (2, 3) is passed on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

from daemon.config import Settings, redact_url
from daemon.embedded import EmbeddedRedis, die_with_parent, find_redis_server
from daemon.startup import EXIT_CONFIG, EXIT_FAILURE, EXIT_REDIS

log = logging.getLogger(__name__)

#: Extra time, beyond WAPIPE_SHUTDOWN_TIMEOUT_SECONDS, before a child is killed on shutdown.
KILL_GRACE_SECONDS = 10.0


class Child:
    """One supervised ``wapipe`` process, in its own process group, its output prefixed."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daemon", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,  # safe: both children start before any thread does
        )

    def pump(self, out: IO[str], lock: threading.Lock) -> threading.Thread:
        assert self.process.stdout is not None
        stream = self.process.stdout

        def copy() -> None:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                with lock:
                    out.write(f"{self.name:<6}| {line}\n")
                    out.flush()

        thread = threading.Thread(target=copy, name=f"pump-{self.name}", daemon=True)
        thread.start()
        return thread

    def exit_code(self) -> int | None:
        return self.process.poll()

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill_group(self) -> None:
        """SIGKILL the child and everything it started (its process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def supervise(settings: Settings, out: IO[str] | None = None) -> int:
    """Run Redis (if embedded), web and worker until a signal or a child's death. Returns the exit code."""
    out = out or sys.stdout
    lock = threading.Lock()

    def say(message: str) -> None:
        with lock:
            out.write(f"{'run':<6}| {message}\n")
            out.flush()

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    previous: dict[int, Callable[..., object] | int | None] = {}
    for handled in (signal.SIGINT, signal.SIGTERM):
        previous[handled] = signal.signal(handled, on_signal)

    env = dict(os.environ)
    embedded: EmbeddedRedis | None = None
    children: list[Child] = []
    code = 0
    try:
        if settings.redis_url is None:
            embedded = EmbeddedRedis(find_redis_server(settings.redis_server), settings.data_dir)
            embedded.start()
            env["REDIS_URL"] = embedded.url
            say(f"embedded Redis {embedded.binary} on {embedded.socket} (AOF on)")
        else:
            say(f"Redis at {redact_url(settings.redis_url)}")
        if settings.sandbox:
            say("sandbox mode: the web serves the Graph API emulator and /sandbox/outbox")
        if stop.is_set():
            return 0
        children = [Child("web", ["web"], env), Child("worker", ["worker"], env)]
        for child in children:
            child.pump(out, lock)
        say(f"web on http://{settings.host}:{settings.port}, worker started; Ctrl-C stops everything")
        while not stop.wait(0.2):
            dead = [child for child in children if child.exit_code() is not None]
            if dead:
                for child in dead:
                    say(
                        f"{child.name} exited unexpectedly with code {child.exit_code()}: stopping everything"
                    )
                codes = {child.exit_code() for child in dead}
                code = next((known for known in (EXIT_CONFIG, EXIT_REDIS) if known in codes), EXIT_FAILURE)
                break
        if received:
            say(f"received {signal.Signals(received[0]).name}: stopping")
    finally:
        _stop_children(children, settings.shutdown_timeout_seconds + KILL_GRACE_SECONDS, say)
        if embedded is not None:
            embedded.stop()
            say("embedded Redis stopped")
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code


def _stop_children(children: list[Child], timeout: float, say: Callable[[str], None]) -> None:
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            child.process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            say(f"{child.name} did not stop within {timeout:.0f} s: killing it")
        child.kill_group()  # also reaps any grandchild left in the group
