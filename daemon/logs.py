"""Structured logging on the standard library: an event name plus bound fields.

Call sites log ``logger.info("webhook_accepted", extra={"envelope_id": ...})``; the formatter
renders the extra fields as ``key=value`` (text) or one JSON object per line (json). Payload
bodies and secrets are never passed as fields.

Logs are content-free, including the lines libraries write: :class:`ContentFilter` (on the one
handler every logger reaches) rewrites Dramatiq's lines, which print whole messages with their
arguments (texts, names, numbers, raw webhooks), so that a message appears as ``actor(id)``, and
drops Dramatiq's per-failure lines with their tracebacks: wapipe logs one line per failed run
itself (:mod:`actors.metrics`). stamina's retry lines are wapipe's own hook
(:func:`log_retry`), without the arguments stamina would log.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import time
import traceback
from types import TracebackType
from typing import Any, TextIO

#: Attributes every LogRecord has; anything else on a record is a bound field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class TextFormatter(logging.Formatter):
    """``2026-11-29T08:00:00.123Z INFO daemon.web webhook_accepted envelope_id=… items=1``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{stamp}.{int(record.msecs):03d}Z", record.levelname, record.name, record.getMessage()]
        parts.extend(f"{key}={_text(value)}" for key, value in _fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``event`` and the bound fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, separators=(",", ":"))


def _text(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(ch.isspace() or ch == '"' for ch in text)) else text


#: Dramatiq's lines about one failed run (with the message, its arguments, a traceback): wapipe
#: logs each failed run itself, in one content-free line.
_DRAMATIQ_FAILURE_LINES = frozenset(
    {
        "Failed to process message %s with unhandled exception.",
        "Failed to process message %s with expected exception %s.",
        "Retrying message %r in %d milliseconds.",
        "Retries exceeded for message %r.",
    }
)
REDACTED = "<redacted>"


def _content_free(value: object) -> object:
    """A Dramatiq message as ``actor(id)``; containers (arguments, options) redacted."""
    if hasattr(value, "actor_name") and hasattr(value, "message_id"):
        return f"{value.actor_name}({value.message_id})"
    if isinstance(value, dict | list | tuple | set | bytes):
        return REDACTED
    return value


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return os.path.join(locations[0], "") if locations else "\0"  # matches no path


class ContentFilter(logging.Filter):
    """Keeps user content out of the lines third-party libraries write (see the module docstring).

    Dramatiq's lines are recognised by where they are written (its package), not by logger name:
    an actor's logger is named after the actor's module (``actors.reply.reply``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._dramatiq = _package_dir("dramatiq")
        self._aiohttp = _package_dir("aiohttp")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.pathname.startswith(self._aiohttp):
            return _without_exception_message(record)
        if not record.pathname.startswith(self._dramatiq):
            return True
        if record.msg in _DRAMATIQ_FAILURE_LINES:
            return False
        if isinstance(record.args, tuple):
            record.args = tuple(_content_free(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = REDACTED  # type: ignore[assignment]
        return True


def _without_exception_message(record: logging.LogRecord) -> bool:
    """aiohttp's error lines carry the exception, whose message may quote the request's bytes (a
    malformed request line is the tail of a body): keep its type and frames, drop its message."""
    error = record.exc_info[1] if record.exc_info else None
    if error is not None:
        record.msg = f"{record.getMessage()}: {type(error).__name__}"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.traceback = traceback_lines(error)
    return True


def traceback_lines(error: BaseException) -> str:
    """Where ``error`` happened, frame by frame, ending in its type only: its message may hold
    content (a bot's own exception quoting a text), the frames do not."""
    frames: TracebackType | None = error.__traceback__
    return "".join(traceback.format_tb(frames)) + type(error).__name__


def log_retry(details: Any) -> None:
    """stamina's retry hook: the callable, the attempt, the wait and the error type, never the
    callable's arguments."""
    logging.getLogger("stamina").warning(
        "retry_scheduled",
        extra={
            "callable": details.name,
            "retry": details.retry_num,
            "wait_seconds": round(details.wait_for, 2),
            "error": type(details.caused_by).__name__,
        },
    )


def configure(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Route every logger (ours, dramatiq's, aiohttp's) to one content-free handler in the chosen
    format, and stamina's retries to :func:`log_retry`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContentFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's access log repeats what our own webhook events say, with client addresses (and the
    # handshake's query string, which holds the verify token).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    from stamina.instrumentation import set_on_retry_hooks

    set_on_retry_hooks([log_retry])
