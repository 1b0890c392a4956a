"""A fresh clone installs exactly the lock, requirements/lock.txt.

CI runs `make test` in a fresh clone, where the Makefile makes .venv from nothing and the suite runs
in it. So if the running environment holds the lock's distributions at the lock's versions and no
others, and the Makefile hands the lock to every pip call (and to the isolated build that installs
setuptools), then what a fresh clone installs is the lock. Nothing here reaches the network or makes
a virtualenv: the environment is read in place and make only prints what it would run (`make -n`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from tests.support.procs import base_env

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
#: The variables through which the Makefile hands the lock to pip: what pip installs, what an
#: isolated build installs (pip 26.2 and later apply only build constraints there).
LOCKED = (f"PIP_CONSTRAINT={LOCK}", f"PIP_BUILD_CONSTRAINT={LOCK}")
UNLOCKED = ("env", "-u", "PIP_CONSTRAINT", "-u", "PIP_BUILD_CONSTRAINT")


def canonical(name: str) -> str:
    """A distribution's name as pip compares names (PEP 503): lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    """The lock's name → version."""
    found: dict[str, str] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            found[name] = version
    return found


def dry_run(*args: str) -> list[list[str]]:
    """The commands `make -n ARGS` prints in the checkout, each split into words as sh would."""
    if shutil.which("make") is None:
        pytest.fail("this test reads the Makefile's commands: it needs make")
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=ROOT,
        env=base_env(),  # not the MAKEFLAGS of a `make test` that runs this
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.replace("\\\n", " ").splitlines() if line.strip()]


def pip_calls(commands: list[list[str]]) -> list[list[str]]:
    """The commands that run pip: `…/pip install …` or `…/python -m pip install …`."""
    return [c for c in commands if any(Path(w).name == "pip" for w in c) and "install" in c]


def test_the_lock_pins_each_distribution_once_by_its_normalised_name() -> None:
    """The lock opens with comment lines saying how it is made (`make lock`), then has only
    `name==version` lines: names normalised as pip compares them, sorted, each once, pip and
    setuptools among them, and no option, URL or path (nothing of this machine's index)."""
    lines = LOCK.read_text(encoding="utf-8").splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert lines[: len(header)] == header
    assert "make lock" in " ".join(header)
    body = lines[len(header) :]
    assert body
    for line in body:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*==[A-Za-z0-9.+!]+", line), line
    names = [line.partition("==")[0] for line in body]
    assert names == sorted(set(names))
    assert all(canonical(name) == name for name in names)
    assert {"pip", "setuptools", "stamina", "mypy", "pytest"} <= set(names)
    assert "wapipe" not in names


def test_the_environment_holds_exactly_the_lock() -> None:
    """Every distribution in the lock is installed in the running environment at exactly the
    locked version, and every installed distribution (but wapipe itself) is in the lock, once.
    (`make test-latest`, on the newest versions, leaves this test out.)"""
    installed: dict[str, set[str]] = {}
    for distribution in metadata.distributions():
        installed.setdefault(canonical(distribution.metadata["Name"]), set()).add(distribution.version)
    installed.pop("wapipe", None)
    locked = pins()
    wrong = {
        name: f"locked {version}, installed {', '.join(sorted(installed.get(name, {'none'})))}"
        for name, version in locked.items()
        if installed.get(name) != {version}
    }
    extra = sorted(set(installed) - set(locked))
    assert (wrong, extra) == ({}, []), "not the lock: make clean test (or, to renew the lock, make lock)"


def test_every_pip_call_of_a_fresh_make_test_reads_the_lock(tmp_path: Path) -> None:
    """What `make test` runs in a fresh clone (`make -n -B`, with .venv elsewhere): a new virtualenv,
    the lock's pip and setuptools installed first, then the editable installs; every pip call and
    pytest (whose packaging test calls pip) run with PIP_CONSTRAINT and PIP_BUILD_CONSTRAINT set to
    the lock, the second being the one that reaches the isolated build's setuptools."""
    venv = tmp_path / ".venv"
    commands = dry_run("-B", f"VENV={venv}", "test")
    assert commands[0][:4] == ["python3", "-m", "venv", "--clear"]
    calls = pip_calls(commands)
    locked = pins()
    assert calls[0][2:] == [
        f"{venv}/bin/python",
        "-m",
        "pip",
        "install",
        "--quiet",
        f"pip=={locked['pip']}",
        f"setuptools=={locked['setuptools']}",
    ]
    assert [c[-1] for c in calls[1:]] == [".[embedded]", ".[embedded,test]"]
    [pytest_run] = [c for c in commands if f"{venv}/bin/pytest" in c]
    for command in [*calls, pytest_run]:
        assert tuple(command[:2]) == LOCKED, command


def test_every_pip_call_in_the_makefile_is_locked_but_those_that_renew_it() -> None:
    """In the Makefile's own text, each recipe line that runs pip starts with $(LOCKED), except in
    `make lock` and `make test-latest`, whose pip calls start with $(UNLOCKED)."""
    target = ""
    seen: dict[str, list[str]] = {}
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        rule = re.match(r"([^\s:=#][^:=]*):(?!=)", line)
        if rule:
            target = rule[1]
        elif line.startswith("\t") and re.search(r"\bpip install\b", line):
            seen.setdefault(target, []).append(line.split()[0])
    expected = {t: "$(UNLOCKED)" if t in ("lock", "test-latest") else "$(LOCKED)" for t in seen}
    assert {t: set(starts) for t, starts in seen.items()} == {t: {e} for t, e in expected.items()}
    assert {"$(STAMP)", "$(TESTSTAMP)", "lock", "test-latest"} <= set(seen)


def test_a_new_lock_rebuilds_the_virtualenv_from_nothing(tmp_path: Path) -> None:
    """With .venv's stamps newer than pyproject.toml and the lock, make has nothing to do for the
    test tools; once the lock is newer (`-W`), it makes the virtualenv afresh (`venv --clear`, so
    that nothing of the old lock stays) and installs again."""
    venv = tmp_path / ".venv"
    venv.mkdir()
    for stamp in (".installed", ".installed-test"):
        (venv / stamp).touch()
    target = f"{venv}/.installed-test"
    assert pip_calls(dry_run(f"VENV={venv}", target)) == []
    commands = dry_run(f"VENV={venv}", "-W", os.path.relpath(LOCK, ROOT), target)
    assert commands[0] == ["python3", "-m", "venv", "--clear", str(venv)]
    assert len(pip_calls(commands)) == 3


def test_make_lock_and_test_latest_take_the_newest_releases() -> None:
    """`make lock` and `make test-latest` install with the lock's variables unset, pip and setuptools
    upgraded, in virtualenvs of their own; `make lock` writes the lock from `pip freeze --all
    --exclude-editable` (pip and setuptools in, wapipe out); `make test-latest` leaves out of pytest
    only the test of this module that the newest versions cannot pass, by its current name."""
    renew = dry_run("-B", "lock")
    assert any(c[:3] == ["rm", "-rf", ".venv-lock"] for c in renew)
    [freeze] = [c for c in renew if c[0] == ".venv-lock/bin/pip" and "freeze" in c]
    assert freeze[1:4] == ["freeze", "--all", "--exclude-editable"]
    assert any(c[-2:] == ["requirements/lock.txt.new", "requirements/lock.txt"] for c in renew)
    latest = dry_run("-B", "test-latest")
    for commands, venv in ((renew, ".venv-lock"), (latest, ".venv-latest")):
        calls = pip_calls(commands)
        assert calls
        assert all(tuple(c[:5]) == UNLOCKED and c[5].startswith(f"{venv}/bin/") for c in calls), calls
        assert [*UNLOCKED, f"{venv}/bin/python", "-m", "pip", "install", "--quiet", "--upgrade"] == calls[0][
            :11
        ]
    [pytest_run] = [c for c in latest if ".venv-latest/bin/pytest" in c]
    [deselected] = [pytest_run[i + 1] for i, word in enumerate(pytest_run) if word == "--deselect"]
    assert deselected == f"tests/test_lock.py::{test_the_environment_holds_exactly_the_lock.__name__}"
