"""``daemon.retrying.call``: stamina's policy, the first attempt made before its context is built."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import stamina
from stamina.instrumentation import RetryDetails

from daemon import retrying


def flaky(*failures: Exception) -> tuple[list[int], Callable[[], int]]:
    """A callable that raises ``failures`` in turn, then returns how many calls it took."""
    calls: list[int] = []

    def attempt() -> int:
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return len(calls)

    return calls, attempt


def test_success_at_once_never_involves_stamina(retries_seen: list[RetryDetails]) -> None:
    """One call, its result returned, no retry reported."""
    calls, attempt = flaky()
    assert retrying.call(attempt, on=ConnectionError, attempts=3, wait_initial=0.01) == 1
    assert calls == [1]
    assert retries_seen == []


def test_a_first_failure_of_a_listed_type_is_stamina_s_retry_1(retries_seen: list[RetryDetails]) -> None:
    """With exception types as ``on``, the first failure is reported by stamina as retry 1, with a wait."""
    _, attempt = flaky(ConnectionError("down"), ConnectionError("still down"))
    assert retrying.call(attempt, on=(ConnectionError, TimeoutError), attempts=5, wait_initial=0.01) == 3
    assert [r.retry_num for r in retries_seen] == [1, 2]
    assert all(r.wait_for > 0 for r in retries_seen)
    assert isinstance(retries_seen[0].caused_by, ConnectionError)


def test_an_unlisted_failure_is_raised_after_one_call(retries_seen: list[RetryDetails]) -> None:
    """A ValueError when only ConnectionError is retried: raised at once."""
    calls, attempt = flaky(ValueError("bad"))
    with pytest.raises(ValueError, match="bad"):
        retrying.call(attempt, on=ConnectionError, attempts=3)
    assert calls == [1]
    assert retries_seen == []


def test_attempts_count_the_first_one(retries_seen: list[RetryDetails]) -> None:
    """attempts=2 means two calls in all: the bare first one and one more, then the last error."""
    calls, attempt = flaky(TimeoutError("1"), TimeoutError("2"), TimeoutError("3"))
    with pytest.raises(TimeoutError, match="2"):
        retrying.call(attempt, on=TimeoutError, attempts=2, wait_initial=0.01)
    assert calls == [1, 1]
    assert [r.retry_num for r in retries_seen] == [1]


def test_a_hook_returning_zero_still_retries() -> None:
    """A backoff hook's 0.0 (retry now) is a retry, not a refusal."""
    _, attempt = flaky(ConnectionError("x"))
    assert retrying.call(attempt, on=lambda error: 0.0, attempts=3) == 2


def test_inactive_stamina_makes_one_call() -> None:
    """``stamina.set_active(False)``: the first failure is final."""
    calls, attempt = flaky(ConnectionError("x"))
    stamina.set_active(False)
    try:
        with pytest.raises(ConnectionError):
            retrying.call(attempt, on=ConnectionError, attempts=3)
    finally:
        stamina.set_active(True)
    assert calls == [1]
