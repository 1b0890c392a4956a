"""`wapipe simulate`: everything the deployment answered, any kind, in order, or that it answered
nothing; sandbox only; one-line errors."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.simulate import render
from tests.support.procs import WAPIPE_SCRIPT, base_env, sandbox_deployment, wapipe

#: A handler answering in every shape a bot might.
SIM_BOT = """
def handle(message):
    text = message.text or ""
    if text == "quiet":
        return []
    if text == "two":
        return [{"type": "text", "text": {"body": "first"}}, {"type": "text", "text": {"body": "second"}}]
    if text == "menu":
        buttons = {"type": "button", "body": {"text": "Pick one"}, "action": {"buttons": [
            {"type": "reply", "reply": {"id": "y", "title": "Yes"}},
            {"type": "reply", "reply": {"id": "n", "title": "No"}}]}}
        rows = {"type": "list", "body": {"text": "Choose"}, "action": {"button": "Options", "sections": [
            {"title": "Fruits", "rows": [{"id": "a", "title": "Apple", "description": "red"},
                                         {"id": "p", "title": "Pear"}]}]}}
        return [{"type": "interactive", "interactive": buttons}, {"type": "interactive", "interactive": rows}]
    return [{"type": "text", "text": {"body": "unquoted " + text}}]
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """`wapipe run` in sandbox mode, started from a bot folder holding `sim_bot.py`."""
    folder = tmp_path_factory.mktemp("simbot")
    (folder / "sim_bot.py").write_text(SIM_BOT, encoding="utf-8")
    with sandbox_deployment(folder, "sim_bot:handle") as env:
        yield folder, env


def simulate(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return wapipe(folder, env, "simulate", *args)


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("hey", "unquoted hey\n"),
        ("two", "first\nsecond\n"),
        ("quiet", "(no reply: the handler answered nothing)\n"),
        (
            "menu",
            "Pick one\n  [Yes]  --button y\n  [No]  --button n\nChoose\n  (Options)\n  Fruits:\n"
            "    - Apple - red  --list-row a\n    - Pear  --list-row p\n",
        ),
    ],
    ids=["unquoted", "several", "nothing", "interactive"],
)
def test_simulate_prints_everything_the_handler_answered(
    deployment: tuple[Path, dict[str, str]], text: str, printed: str
) -> None:
    """Whatever the handler returns (unquoted text, several messages, buttons and a list, nothing),
    simulate waits until the pipeline marks the message handled and prints it all, exit 0."""
    folder, env = deployment
    result = simulate(folder, env, "--text", text)
    assert (result.returncode, result.stdout) == (0, printed), result.stderr


def test_two_users_simulating_at_once_each_get_their_own_answer(
    deployment: tuple[Path, dict[str, str]],
) -> None:
    """Answers are matched to the inbound message they answer, not to the user or the time."""
    folder, env = deployment
    runs = [
        subprocess.Popen(
            [WAPIPE_SCRIPT, "simulate", "--text", f"n{n}", "--from", "1555000000" + str(n % 2)],
            cwd=folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    outputs = [run.communicate(timeout=30) for run in runs]
    assert [out for out, _ in outputs] == [f"unquoted n{n}\n" for n in range(4)]


def test_simulate_refuses_outside_the_sandbox_in_one_line(tmp_path: Path) -> None:
    """With an access token set, a simulated message would be answered to a real number: exit 2."""
    env = base_env(
        WHATSAPP_ACCESS_TOKEN="token-value-1",
        WHATSAPP_APP_SECRET="secret-value-1",
        WHATSAPP_VERIFY_TOKEN="verify-value-1",
    )
    result = simulate(tmp_path, env, "--text", "hi")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "sandbox mode only" in result.stderr
    assert "token-value-1" not in result.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--image", "missing.jpg"], "--image missing.jpg: No such file or directory"),
        (["--image", "notes.txt"], "takes a .jpg, .jpeg, .png or .webp file"),
        (["--text", "hi", "--timeout", "abc"], "argument --timeout: invalid"),
        (["--text", "hi", "--from", "+44 7700"], "--from +44 7700: a phone number in digits"),
        (["--text", "hi", "--image", "x.jpg"], "not allowed with argument"),
    ],
)
def test_bad_arguments_are_one_line_with_exit_2(
    tmp_path: Path, redis_url: str, args: list[str], said: str
) -> None:
    """A missing or unsupported image, a bad timeout or number, two kinds at once: one line, exit 2."""
    (tmp_path / "notes.txt").write_text("not an image")
    result = simulate(tmp_path, base_env(REDIS_URL=redis_url), *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert said in result.stderr
    assert "Traceback" not in result.stderr


def test_every_outbound_kind_renders_readably() -> None:
    """Media, location, reactions, templates, contacts and call-to-action buttons print as a person reads them."""
    assert render({"type": "image", "image": {"id": "123", "caption": "look"}}) == "[image] look"
    assert (
        render({"type": "document", "document": {"link": "https://x/y.pdf"}}) == "[document] https://x/y.pdf"
    )
    assert render({"type": "location", "location": {"latitude": 1.5, "longitude": 2, "name": "Here"}}) == (
        "[location] 1.5, 2 Here"
    )
    assert render({"type": "reaction", "reaction": {"message_id": "wamid.1", "emoji": "👍"}}) == (
        "[reaction] 👍 to wamid.1"
    )
    assert render({"type": "template", "template": {"name": "hello", "language": {"code": "en_US"}}}) == (
        "[template] hello (en_US)"
    )
    assert render({"type": "contacts", "contacts": [{}, {}]}) == "[contacts] 2 contact(s)"
    cta = {
        "type": "cta_url",
        "body": {"text": "Open"},
        "action": {"name": "cta_url", "parameters": {"display_text": "Site", "url": "https://e.x"}},
    }
    assert render({"type": "interactive", "interactive": cta}) == "Open\n  [Site] https://e.x"
    assert render({"type": "sticker", "sticker": {"id": "9"}}) == "[sticker] media id 9"
