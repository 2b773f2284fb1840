"""The ``orch`` command and what only it uses: the control client, the status views, the
daemon and the demo. The host side never imports this package."""

from orchestrator.cli.commands import main as main

__all__ = ["main"]
