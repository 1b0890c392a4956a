"""Structured logging on the standard library: an event name plus bound fields.

Call sites log ``logger.info("webhook_accepted", extra={"envelope_id": ...})``; the formatter
renders the extra fields as ``key=value`` (text) or one JSON object per line (json). Payload
bodies and secrets are never passed as fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time
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


def configure(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Route every logger (ours, dramatiq's, aiohttp's) to one handler in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's access log repeats what our own webhook events say, with client addresses.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
