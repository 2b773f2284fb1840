"""The documentation keeps up with the code: every public name has its reference entry."""

from __future__ import annotations

import re
from pathlib import Path

import orchestrator
import workers
import workers.testing

ROOT = Path(__file__).parents[2]


def test_the_reference_documents_every_public_name() -> None:
    documented = set(re.findall(r"^::: [\w.]+\.(\w+)$", (ROOT / "docs" / "reference.md").read_text(), re.M))
    public = {*orchestrator.__all__, *workers.__all__, *workers.testing.__all__}
    assert public - documented == set()


def test_the_readme_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[2:6] == [
        "```bash",
        "pip install -e . && orch demo",
        "pip install -e '.[dev]' && python -m pytest",
        "```",
    ]
    assert len(lines) <= 250
