"""`wapipe check`: one line per check, non-zero exit on any failure, no secret shown."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import ACCESS_TOKEN, APP_SECRET, pipeline_env
from tests.support.fake_graph import FakeGraph, graph_error
from tests.support.procs import WAPIPE_SCRIPT, base_env
from tests.support.waiting import free_port

PNID = "620000000000001"


def check(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WAPIPE_SCRIPT, "check"], cwd=folder, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def lines_of(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    """check name -> (status, detail)."""
    found = {}
    for line in result.stdout.splitlines():
        status, rest = line[:5].strip(), line[6:]
        name, detail = rest[:14].strip(), rest[15:]
        found[name] = (status, detail)
    return found


def test_a_ready_production_deployment_passes_every_check(
    tmp_path: Path, redis_url: str, fake_graph: FakeGraph
) -> None:
    """Configuration, Redis (AOF), the token read back by the Graph API for the configured number,
    writable directories and the handler from the working directory: all ok, exit 0."""
    (tmp_path / "my_bot.py").write_text("def handle(message):\n    return []\n")
    env = pipeline_env(
        redis_url,
        fake_graph.url,
        tmp_path / "data",
        WAPIPE_PHONE_NUMBER_IDS=PNID,
        WAPIPE_HANDLER="my_bot:handle",
    )
    result = check(tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    found = lines_of(result)
    assert list(found) == ["configuration", "redis", "graph api", "data dir", "media dir", "handler"]
    assert {status for status, _ in found.values()} == {"ok"}
    assert "AOF on" in found["redis"][1]
    assert f"phone number id {PNID}" in found["graph api"][1]
    assert str(tmp_path / "my_bot.py") in found["handler"][1]
    [read] = fake_graph.of_kind("node")
    assert read.path == f"/v25.0/{PNID}"
    assert read.headers["Authorization"] == f"Bearer {ACCESS_TOKEN}"
    for secret in (ACCESS_TOKEN, APP_SECRET):
        assert secret not in result.stdout + result.stderr


def test_a_refused_token_and_other_mistakes_each_fail_their_line(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    """The Graph API refusing the token (code 190), Redis unreachable, a media dir that is a file and
    a handler that is not there: each its own FAIL line, the other checks still run, exit 1."""
    fake_graph.script("node", graph_error(190, 401, "Error validating access token"))
    (tmp_path / "a-file").write_text("")
    env = pipeline_env(
        f"redis://127.0.0.1:{free_port()}/0",
        fake_graph.url,
        tmp_path / "data",
        WAPIPE_MEDIA_DIR=str(tmp_path / "a-file"),
        WAPIPE_HANDLER="not_here:handle",
    )
    result = check(tmp_path, env)
    assert result.returncode == 1
    found = lines_of(result)
    assert found["configuration"][0] == "ok"
    assert found["redis"][0] == "FAIL"
    assert found["graph api"] == (
        "FAIL",
        "GET /me answered 401: the access token is refused (code 190: (#190) Error validating access token); "
        "renew WHATSAPP_ACCESS_TOKEN",
    )
    assert found["data dir"][0] == "ok"
    assert found["media dir"][0] == "FAIL"
    assert "WAPIPE_MEDIA_DIR" in found["media dir"][1]
    assert found["handler"][0] == "FAIL"
    assert f"no module 'not_here' in {tmp_path.resolve()}" in found["handler"][1]
    assert ACCESS_TOKEN not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_sandbox_mode_is_checked_too(tmp_path: Path, redis_url: str) -> None:
    """Sandbox mode: said so; the emulator is not running yet, which is not a failure; bad config exits 2."""
    env = base_env(REDIS_URL=redis_url, WAPIPE_DATA_DIR=str(tmp_path / "data"))
    result = check(tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    found = lines_of(result)
    assert found["configuration"][1].startswith("sandbox mode")
    assert "not running yet" in found["graph api"][1]
    broken = check(tmp_path, {**env, "WHATSAPP_VERIFY_TOKEN": "v"})
    assert broken.returncode == 2
    assert broken.stdout == ""
    assert broken.stderr.count("\n") == 1
    assert "WHATSAPP_ACCESS_TOKEN" in broken.stderr
