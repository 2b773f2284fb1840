"""`orch demo`, the README's first command: every task completes and finds something."""

from __future__ import annotations

import re

from click.testing import CliRunner

from orchestrator.cli import main


def test_the_demo_runs_every_type_and_each_finds_something(no_leaks: None) -> None:
    shown = CliRunner().invoke(main, ["demo"])
    assert shown.exit_code == 0, shown.output
    assert "10/10 tasks completed" in shown.output
    read = [int(n) for n in re.findall(r"(\d+) sources read", shown.output)]
    assert len(read) == 2
    assert all(n > 0 for n in read)  # the research tasks found the docstrings they read
    assert "no match" not in shown.output
