"""The state store's Lua scripts: one ``.lua`` file each, read once per process.

A script that enqueues (``enqueue``, ``claim``, ``replay``) is prefixed with ``push.lua``, the
one enqueue every producer shares (see :mod:`daemon.store.queues`); one that reads or writes the
message records (``claim``, ``record``, ``ledger``) with ``records.lua`` (see
:mod:`daemon.store.records`); one that gives places in a user's order with ``order.lua`` (see
:mod:`daemon.store.order`). Scripts are registered on a
client by :func:`register` (redis-py: EVALSHA, with the source sent again only after Redis lost
it, e.g. a restart).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources
from typing import Any, Literal

import redis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript, Script
from redis.exceptions import NoScriptError

Name = Literal[
    "enqueue",
    "claim",
    "replay",
    "record",
    "ledger",
    "reserve",
    "release",
    "record_refresh",
    "record_replace",
    "record_withdraw",
    "turn",
    "order_wait",
    "order_enter",
    "note",
    "requeue",
]
#: Scripts that call ``push`` (defined in ``push.lua``).
_PUSHING = frozenset({"enqueue", "claim", "replay"})
#: Scripts that use the message records (``records.lua``).
_RECORDING = frozenset({"claim", "record", "ledger"})
#: Scripts that add to a user's index (``index.lua``).
_INDEXING = frozenset({"claim", "note"})
#: Scripts that give or read places in a user's order (``order.lua``).
_ORDERING = frozenset({"claim", "order_enter"})


@functools.cache
def source(name: Name) -> str:
    """The Lua source of script ``name``, as sent to Redis."""
    folder = resources.files(__package__).joinpath("lua")
    text = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if name in _ORDERING:
        text = folder.joinpath("order.lua").read_text(encoding="utf-8") + text
    if name in _INDEXING:
        text = folder.joinpath("index.lua").read_text(encoding="utf-8") + text
    if name in _RECORDING:
        text = folder.joinpath("records.lua").read_text(encoding="utf-8") + text
    if name in _PUSHING:
        text = folder.joinpath("push.lua").read_text(encoding="utf-8") + text
    return text


def register(client: redis.Redis, name: Name) -> Script:
    """Script ``name`` bound to ``client`` (its SHA is computed here, once)."""
    return client.register_script(source(name))


def call(client: redis.Redis, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """Run a registered ``script`` on ``client`` with one EVALSHA (redis-py's ``Script.__call__``
    costs about a third more per call, which counts on the per-message path); when Redis lost its
    scripts (a restart, ``SCRIPT FLUSH``), the script's own call sends its source again."""
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return script(keys=keys, args=args, client=client)


def register_async(client: aioredis.Redis, name: Name) -> AsyncScript:
    """The same for a ``redis.asyncio`` client."""
    return client.register_script(source(name))
