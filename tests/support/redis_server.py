"""A real redis-server started by the tests on a free loopback port, that they can stop and restart."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import redis

from daemon.embedded import find_redis_server
from tests.support.waiting import free_port, wait_for


class RedisServer:
    """One redis-server process with its data in ``directory`` (AOF on unless told otherwise)."""

    def __init__(self, directory: Path, *, appendonly: bool = True, save: str = "") -> None:
        self.binary = find_redis_server(os.environ.get("WAPIPE_REDIS_SERVER"))
        self.directory = directory
        self.appendonly = appendonly
        self.save = save
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "everysec",
                "--save", *(self.save.split() or [""]),
                "--logfile", str(self.directory / "redis.log"),
                "--maxmemory-policy", "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                return bool(self.client().ping())
            except redis.ConnectionError:
                return False

        wait_for(answers, timeout=10, what="redis-server to answer PING")

    def stop(self) -> None:
        """SIGTERM and wait (Redis flushes its AOF on a clean stop)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
