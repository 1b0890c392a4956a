"""stamina's retries with the first attempt made before stamina's retry context is built.

Building the context (a tenacity ``Retrying`` with its stop, wait and retry objects, and the
instrumentation lookups) costs CPU on every call, retried or not: measured on the benchmark
machine, ~15 µs for the sync context (120 µs for the async one), against ~90 µs for a whole Graph
request and ~50 µs for a Redis command. Almost every call succeeds at once, so :func:`call` makes
the first attempt bare (0.1 µs of overhead) and builds the context only after a failure worth
retrying. That failure is handed to stamina as the
failure of its own first attempt, so the back-off before the second attempt, the attempt count,
``stamina.set_active`` / ``set_testing`` and stamina's instrumentation (logs, Prometheus) are
exactly those of stamina alone. Only a ``timeout`` starts counting at the first failure rather
than at the first attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import stamina

T = TypeVar("T")

#: What stamina's ``on=`` takes: exception types, or a hook returning False, True or a back-off.
#: The hook is given any ``BaseException`` an attempt raised (stamina 26.2 says so in its types;
#: earlier releases typed it ``Exception``): one taking ``BaseException`` is right for both.
On = type[Exception] | tuple[type[Exception], ...] | Callable[[BaseException], bool | float]


def _retried(on: On, error: Exception) -> bool:
    if isinstance(on, type | tuple):
        return isinstance(error, on)
    return on(error) is not False


def call(attempt: Callable[[], T], *, on: On, **retry_context: Any) -> T:
    """``attempt()`` under ``stamina.retry_context(on=on, **retry_context)`` (see the module docstring)."""
    try:
        return attempt()
    except Exception as error:
        if not _retried(on, error):
            raise
        first_failure: Exception | None = error
    for retry in stamina.retry_context(on=on, **retry_context):
        with retry:
            if first_failure is not None:
                failure, first_failure = first_failure, None
                raise failure
            return attempt()
    raise AssertionError("unreachable: stamina re-raises the last failure")
