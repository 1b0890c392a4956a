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


def test_every_cited_document_is_in_the_repository() -> None:
    """Code, tests and docs cite only documents the repository holds (nothing outside it)."""
    cited = re.compile(r"(?<![\w/.-])([\w/.-]+\.md)\b")
    missing = []
    for path in [
        *ROOT.glob("*.md"),
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("[abdgt]*/**/*.py"),
        ROOT / "Makefile",
    ]:
        if ".venv" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        assert "../" + "shared" not in text, path  # the steering documents beside the repository
        for name in cited.findall(text):
            if not ((ROOT / name).exists() or (path.parent / name).exists()):
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert missing == []
