"""The documented configuration matches the code: every variable is in .env.example and the README."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def variables_in_code() -> set[str]:
    source = (ROOT / "daemon" / "config.py").read_text(encoding="utf-8")
    return set(re.findall(r'"((?:WHATSAPP|WAPIPE)_[A-Z_]+|REDIS_URL|PORT)"', source))


def test_every_variable_is_in_env_example() -> None:
    """.env.example lists every variable the settings read, and nothing else."""
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    listed = set(re.findall(r"^([A-Z_]+)=", example, flags=re.MULTILINE))
    assert listed == variables_in_code()


def test_every_variable_is_in_the_readme() -> None:
    """The README's configuration section names every variable."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = sorted(name for name in variables_in_code() if f"`{name}`" not in readme)
    assert missing == []
