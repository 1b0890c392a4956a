"""How the worker processes give the web the CPU first (their nice, their session's share, batch
scheduling), and that a system refusing any of it still gets a running worker, with a warning.
(``tests/test_pipeline.py`` checks every thread of real worker processes.)"""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest

from actors import supervisor


def _refuse(*_args: Any) -> None:
    raise PermissionError(1, "Operation not permitted")


def test_a_refused_batch_policy_or_priority_is_a_warning_not_a_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A sandbox (a seccomp profile, another OS policy) that refuses SCHED_BATCH or a lower priority
    leaves the workers as started: each refusal is one warning line, never an exception."""
    monkeypatch.setattr(os, "sched_setscheduler", _refuse)
    monkeypatch.setattr(os, "setpriority", _refuse)
    with caplog.at_level(logging.WARNING, logger="actors.supervisor"):
        assert supervisor.schedule_as_batch("batch") is False
        assert supervisor.lower_priority(10) is None
    assert [record.getMessage() for record in caplog.records] == [
        "worker_batch_scheduling_refused",
        "worker_priority_refused",
    ]


def test_nothing_is_changed_when_asked_for_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """`WAPIPE_WORKER_NICE=0` and `WAPIPE_WORKER_SCHEDULER=normal` touch neither the priority nor the
    policy."""
    monkeypatch.setattr(os, "sched_setscheduler", _refuse)
    monkeypatch.setattr(os, "setpriority", _refuse)
    assert supervisor.schedule_as_batch("normal") is False
    assert supervisor.lower_priority(0) is None


def test_a_higher_nice_already_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker started at nice 15 (by `nice -n 15`, a unit file) is not raised back to 10."""
    set_to: list[int] = []
    monkeypatch.setattr(os, "getpriority", lambda *_args: 15)
    monkeypatch.setattr(os, "setpriority", lambda _which, _who, value: set_to.append(value))
    monkeypatch.setattr(os, "getsid", lambda _pid: -1)  # not a session leader: no autogroup write
    assert supervisor.lower_priority(10) == (15, False)
    assert set_to == [15]
