"""How the processes of one sandbox deployment find its Graph API emulator, and only it.

The emulator is served by ``wapipe web`` (:mod:`daemon.sandbox`). Once the web listens, it records
its address and a fresh random token under :data:`RECORD_KEY` in the deployment's Redis, and keeps
the record alive while it runs (:class:`Announcer`). Worker processes, ``wapipe simulate`` and
``wapipe check`` read the record from the Redis they share with that web: nothing is derived from
``PORT``, which a Procfile runner sets differently for every process.

Before a worker sends anything to the recorded address it makes the server there prove that it
holds the token (an HMAC of a random challenge, :func:`verify`), so a program that took the port
after the web stopped never receives a reply or the token. Every emulator response also carries
:data:`PROOF_HEADER`, which the worker checks on each answer. The token is the emulator's bearer
token: only processes that can read the deployment's Redis can use the emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlencode

import redis
import redis.asyncio as aioredis

from daemon.config import SANDBOX_GRAPH_PATH
from daemon.store import keys, scripts

log = logging.getLogger(__name__)

RECORD_KEY = keys.SANDBOX_EMULATOR
#: The record expires unless its web refreshes it: a web killed with SIGKILL is forgotten this fast.
RECORD_TTL_SECONDS = 30
REFRESH_SECONDS = 10.0
#: Header on every emulator answer: HMAC(token, :data:`_PROOF_CONTEXT`).
PROOF_HEADER = "X-Wapipe-Sandbox"
#: Header on a worker's sends in sandbox mode: the inbound message they answer (for the outbox).
IN_REPLY_TO_HEADER = "X-Wapipe-In-Reply-To"
IDENTITY_PATH = "/sandbox/identity"
_PROOF_CONTEXT = "wapipe-sandbox-emulator"

#: How long a web waits for the web of an existing record to prove it is alive.
PEER_CHECK_SECONDS = 2.0


def new_token() -> str:
    return secrets.token_hex(24)


def proof(token: str, challenge: str = _PROOF_CONTEXT) -> str:
    """What only the holder of ``token`` can compute: HMAC-SHA256(token, challenge), hex."""
    return hmac.new(token.encode(), challenge.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class EmulatorRecord:
    """One web's emulator: where it listens (``http://127.0.0.1:8080``) and its token."""

    web_url: str
    token: str

    @property
    def graph_url(self) -> str:
        return self.web_url + SANDBOX_GRAPH_PATH

    @property
    def webhook_url(self) -> str:
        return self.web_url + "/webhook"

    def encode(self) -> str:
        return json.dumps({"web_url": self.web_url, "token": self.token}, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> EmulatorRecord | None:
        try:
            data = json.loads(raw)
            return cls(web_url=str(data["web_url"]), token=str(data["token"]))
        except (ValueError, KeyError, TypeError):
            return None


def read(client: redis.Redis) -> EmulatorRecord | None:
    """The recorded emulator of this Redis's deployment, if a sandbox web is running."""
    raw = client.get(RECORD_KEY)
    return None if raw is None else EmulatorRecord.decode(raw)


def verify(record: EmulatorRecord, timeout: float) -> bool:
    """True when the server at the record's address proves that it holds the record's token."""
    challenge = secrets.token_hex(16)
    url = f"{record.web_url}{IDENTITY_PATH}?{urlencode({'challenge': challenge})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) from our record
            answer = json.loads(response.read(4096))
    except (OSError, ValueError):
        return False
    given = answer.get("proof") if isinstance(answer, dict) else None
    return isinstance(given, str) and hmac.compare_digest(given, proof(record.token, challenge))


class Announcer:
    """The web's side: record the emulator after the web listens, refresh it, withdraw it at stop.

    A record written by another web that still proves itself is left alone (workers keep one
    emulator); the record of a web that no longer does (killed, restarted) is replaced at once.
    """

    def __init__(self, client: aioredis.Redis, record: EmulatorRecord) -> None:
        self.client = client
        self.record = record
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> bool:
        """Record the emulator now (True), or not yet (False: another web's live record, or Redis
        unreachable for the moment); keep refreshing either way."""
        self._task = asyncio.get_running_loop().create_task(self._keep())
        try:
            return await self._refresh()
        except (redis.RedisError, TimeoutError) as error:
            log.warning("sandbox_record_refresh_failed", extra={"error": type(error).__name__})
            return False

    async def _refresh(self) -> bool:
        value = self.record.encode()
        if await self.client.eval(scripts.source("record_refresh"), 1, RECORD_KEY, value, RECORD_TTL_SECONDS):
            return True
        current = await self.client.get(RECORD_KEY)
        if current is None:
            return await self._refresh()
        other = EmulatorRecord.decode(current)
        if other is not None and await asyncio.to_thread(verify, other, PEER_CHECK_SECONDS):
            return False
        replaced = await self.client.eval(
            scripts.source("record_replace"), 1, RECORD_KEY, current, value, RECORD_TTL_SECONDS
        )
        if replaced:
            log.info("sandbox_record_replaced", extra={"previous": other.web_url if other else None})
        return bool(replaced)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await self._refresh()
            except (redis.RedisError, TimeoutError) as error:
                log.warning("sandbox_record_refresh_failed", extra={"error": type(error).__name__})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(redis.RedisError, TimeoutError):
            await self.client.eval(scripts.source("record_withdraw"), 1, RECORD_KEY, self.record.encode())


class EmulatorNotFound(Exception):
    """No running sandbox web recorded an emulator in this Redis, or it did not prove itself."""


class EmulatorLink:
    """A worker's view of its deployment's emulator: the record, re-read every few seconds and
    verified once per record before use. Safe to call from many threads.

    Args:
        client: a thread-safe (pooled) ``redis.Redis`` of the deployment.
        timeout: for the identity check.
    """

    #: How long a reading of the record is trusted before Redis is asked again.
    RECHECK_SECONDS = 2.0

    def __init__(self, client: redis.Redis, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._lock = threading.Lock()
        self._verified: EmulatorRecord | None = None
        self._read_at = float("-inf")

    def current(self) -> EmulatorRecord:
        """The verified emulator record.

        Raises:
            EmulatorNotFound: none is recorded, or the server at its address failed the proof.
        """
        with self._lock:
            if self._verified is not None and time.monotonic() - self._read_at < self.RECHECK_SECONDS:
                return self._verified
            try:
                record = read(self._client)
            except redis.RedisError as error:
                raise EmulatorNotFound(
                    f"cannot read the sandbox emulator's record: {type(error).__name__}"
                ) from None
            if record is None:
                self._verified = None
                raise EmulatorNotFound(
                    "no sandbox emulator is recorded: is `wapipe web` running (sandbox mode)?"
                )
            if record != self._verified:
                if not verify(record, self._timeout):
                    self._verified = None
                    raise EmulatorNotFound(
                        f"the server at {record.web_url} is not this deployment's sandbox emulator"
                    )
                log.info("sandbox_emulator_found", extra={"url": record.web_url})
            self._verified = record
            self._read_at = time.monotonic()
            return record

    def close(self) -> None:
        self._client.close()
