"""What ``orch status --watch`` and ``orch submit --follow`` draw live on the terminal (rich)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

from orchestrator.cli.status_text import render_text

REFRESH_S = 1.0
# Piped output keeps every name, id and pid whole: a wide table rather than a cut one.
PIPED_WIDTH = 200


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else PIPED_WIDTH)


def watch(load: Callable[[], list[dict[str, Any]]]) -> None:
    """Redraw the status until Ctrl-C (the caller handles KeyboardInterrupt)."""
    with Live(Text(render_text(load())), console=_console(), refresh_per_second=4) as live:
        while True:
            time.sleep(REFRESH_S)
            live.update(Text(render_text(load())))


def follow_progress(events: Iterator[dict[str, Any]], task_id: str) -> None:
    """A progress bar from ``task_progress`` and partial results, on stderr, until the task ends."""
    console = _console(stderr=True)
    with Progress(
        TextColumn(task_id),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    ) as bar:
        row = bar.add_task("", total=None)
        for event in events:
            if event.get("event") == "task_progress":
                progress = event["progress"]
                bar.update(
                    row,
                    completed=progress["completed"],
                    total=progress["total"],
                    description=progress["message"],
                )
            elif event.get("event") == "task_partial":
                console.print(f"partial {event['index']}: {event['data']}")
