"""The ``orch`` command line. Commands are thin: they parse, then call the public API.

Imports of the orchestrator's core are deferred into each command, so ``orch --help`` stays fast.
"""

from __future__ import annotations

import click


class OrchCliError(click.ClickException):
    """A runtime failure reported by a command (exit code 3; 2 stays click's usage error)."""

    exit_code = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="parallel-orchestrator")
def main() -> None:
    """parallel-orchestrator: run typed tasks on worker processes, by priority."""


@main.command()
@click.option("--workers", default=4, show_default=True, type=click.IntRange(1, 64), help="worker processes")
def demo(workers: int) -> None:
    """Run tasks of every built-in type with live progress, then print a summary."""
    from orchestrator.demo import run_demo
    from orchestrator.errors import OrchestratorError

    try:
        code = run_demo(workers)
    except OrchestratorError as exc:
        raise OrchCliError(str(exc)) from exc
    raise SystemExit(code)
