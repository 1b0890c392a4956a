"""Configuration: the README's table, frozen settings, one-line errors with exit code 2, no secrets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from daemon.config import ConfigError, Secret, Settings
from tests.support.procs import Proc, base_env, wait_exit

PRODUCTION = {
    "WHATSAPP_ACCESS_TOKEN": "EAAG-super-secret-token",
    "WHATSAPP_APP_SECRET": "0123456789abcdef0123456789abcdef",
    "WHATSAPP_VERIFY_TOKEN": "my-verify-token",
    "REDIS_URL": "redis://:hunter2@127.0.0.1:1/0",
}


def test_defaults_follow_the_design_table() -> None:
    """With only the three Meta variables set, every other default is the README's."""
    settings = Settings.from_env(PRODUCTION)
    assert not settings.sandbox
    assert settings.graph_url == "https://graph.facebook.com"
    assert settings.api_version == "v25.0"
    assert settings.graph_base == "https://graph.facebook.com/v25.0"
    assert settings.media_hosts == ("lookaside.fbsbx.com",)
    assert settings.port == 8080
    assert settings.host == "0.0.0.0"
    assert settings.metrics_port == 9191
    assert settings.max_body_bytes == 3_670_016
    assert settings.max_queue_depth == 100_000
    assert settings.send_rate == 80
    assert settings.media_max_bytes == 104_857_600
    assert settings.worker_threads == 8
    assert settings.log_level == "INFO"
    assert settings.log_format == "text"
    assert settings.data_dir == Path("var")
    assert settings.media_dir == Path("var/media")
    assert settings.phone_number_ids is None
    assert settings.dlq_retention_days == 30
    assert settings.allow_volatile_redis is False


def test_sandbox_mode_without_any_meta_setting() -> None:
    """No Meta setting at all: sandbox secrets, loopback only, no fixed Graph URL (nothing from PORT),
    and no media host but the emulator's own address."""
    settings = Settings.from_env({"PORT": "8123"})
    assert settings.sandbox
    assert settings.app_secret.get() == "sandbox-app-secret"
    assert settings.verify_token.get() == "sandbox-verify-token"
    assert settings.graph_url is None
    assert settings.host == "127.0.0.1"
    assert settings.media_hosts == ()
    assert settings.warnings == ()
    with pytest.raises(RuntimeError, match="sandbox"):
        _ = settings.graph_base


@pytest.mark.parametrize(
    "given",
    [
        {"WHATSAPP_APP_SECRET": "s3cr3t-value"},
        {"WHATSAPP_VERIFY_TOKEN": "vt-value"},
        {"WHATSAPP_GRAPH_URL": "http://127.0.0.1:9/graph"},
        {"WHATSAPP_APP_SECRET": "s3cr3t-value", "WHATSAPP_VERIFY_TOKEN": "vt-value"},
    ],
)
def test_a_meta_setting_without_the_access_token_is_refused(given: dict[str, str]) -> None:
    """Half-configured production never falls back to the sandbox: the error names the missing token
    and what was set, and shows no value."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(given)
    assert caught.value.variable == "WHATSAPP_ACCESS_TOKEN"
    for name, value in given.items():
        assert name in str(caught.value)
        assert value not in str(caught.value)


def test_sandbox_listens_on_loopback_unless_told_and_then_warns() -> None:
    """WAPIPE_HOST set to a public address in sandbox mode is honoured with a warning; loopback is not
    warned about; WHATSAPP_MEDIA_HOSTS is ignored in sandbox mode, with a warning."""
    exposed = Settings.from_env({"WAPIPE_HOST": "0.0.0.0"})
    assert exposed.host == "0.0.0.0"
    assert len(exposed.warnings) == 1
    assert "public sandbox secret" in exposed.warnings[0]
    assert Settings.from_env({"WAPIPE_HOST": "::1"}).warnings == ()
    ignored = Settings.from_env({"WHATSAPP_MEDIA_HOSTS": "127.0.0.1"})
    assert ignored.media_hosts == ()
    assert "WHATSAPP_MEDIA_HOSTS is ignored" in ignored.warnings[0]


def test_settings_are_frozen_and_secrets_never_shown() -> None:
    """The settings cannot change after start, and repr() shows no secret (nor the Redis password)."""
    settings = Settings.from_env(PRODUCTION)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
    shown = repr(settings) + str(settings.app_secret)
    for secret in ("EAAG-super-secret-token", "0123456789abcdef0123456789abcdef", "my-verify-token"):
        assert secret not in shown
    assert Secret("x") == Secret("x")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("WHATSAPP_APP_SECRET", None, "is required"),
        ("WHATSAPP_VERIFY_TOKEN", None, "is required"),
        ("WHATSAPP_APP_SECRET", "has space inside", "white space"),
        ("WHATSAPP_ACCESS_TOKEN", "tok\ten", "white space"),
        ("WHATSAPP_GRAPH_URL", "ftp://graph", "URL"),
        ("WHATSAPP_API_VERSION", "25", "v25.0"),
        ("WHATSAPP_MEDIA_HOSTS", "bad host!", "host names"),
        ("REDIS_URL", "http://x", "URL"),
        ("PORT", "eighty", "whole number"),
        ("PORT", "70000", "at most 65535"),
        ("WAPIPE_METRICS_PORT", "-1", "at least 0"),
        ("WAPIPE_HANDLER", "no-colon", "module:function"),
        ("WAPIPE_PHONE_NUMBER_IDS", "123,abc", "phone number ids"),
        ("WAPIPE_MAX_BODY_BYTES", "12", "at least 1024"),
        ("WAPIPE_MAX_QUEUE_DEPTH", "0", "at least 1"),
        ("WAPIPE_SEND_RATE", "-5", "at least 0"),
        ("WAPIPE_MEDIA_MAX_BYTES", "x", "whole number"),
        ("WAPIPE_WORKER_PROCESSES", "0", "at least 1"),
        ("WAPIPE_WORKER_THREADS", "many", "whole number"),
        ("WAPIPE_LOG_LEVEL", "LOUD", "one of"),
        ("WAPIPE_LOG_FORMAT", "xml", "one of"),
        ("WAPIPE_ALLOW_VOLATILE_REDIS", "maybe", "1 or 0"),
        ("WAPIPE_DLQ_RETENTION_DAYS", "0", "at least 1"),
        ("WAPIPE_REDIS_TIMEOUT_SECONDS", "nan", "finite number"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str | None, expected: str) -> None:
    """Each missing or malformed variable raises ConfigError naming it and the problem."""
    env = dict(PRODUCTION)
    if value is None:
        env.pop(variable)
    else:
        env[variable] = value
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == variable
    assert expected in str(caught.value)
    assert str(caught.value).startswith(variable + ":")


def test_redis_password_is_not_echoed() -> None:
    """A malformed REDIS_URL with a password is reported without it."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**PRODUCTION, "REDIS_URL": "http://:hunter2@host"})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WHATSAPP_APP_SECRET", None),
        ("WHATSAPP_VERIFY_TOKEN", None),
        ("WHATSAPP_APP_SECRET", "secret with spaces EAAG-super-secret-token"),
        ("PORT", "not-a-port"),
    ],
)
@pytest.mark.parametrize("command", ["web", "worker"])
def test_processes_exit_2_with_one_line(
    tmp_path: Path, command: str, variable: str, value: str | None
) -> None:
    """`wapipe web|worker` with bad configuration exits 2 with one line naming it, no secret echoed."""
    env = base_env(**PRODUCTION)
    if value is None:
        env.pop(variable)
    else:
        env[variable] = value
    proc = Proc(command, [command], env, tmp_path)
    try:
        assert wait_exit(proc, timeout=30) == 2
        output = proc.output().strip()
    finally:
        proc.stop()
    assert len(output.splitlines()) == 1, output
    assert variable in output
    for secret in (
        "EAAG-super-secret-token",
        "0123456789abcdef0123456789abcdef",
        "my-verify-token",
        "hunter2",
    ):
        assert secret not in output


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    """`.env` fills in what the environment lacks; a real variable overrides it."""
    from daemon.config import load

    env_file = tmp_path / ".env"
    env_file.write_text(
        "PORT=9000\nWAPIPE_LOG_LEVEL=DEBUG\nWHATSAPP_ACCESS_TOKEN=from-file\n", encoding="utf-8"
    )
    settings = load(
        {"PORT": "9001", "WHATSAPP_APP_SECRET": "app-secret", "WHATSAPP_VERIFY_TOKEN": "vt"}, env_file
    )
    assert settings.port == 9001
    assert settings.log_level == "DEBUG"
    assert settings.access_token is not None
    assert settings.access_token.get() == "from-file"
    assert not settings.sandbox
