"""``orch demo``: a real orchestrator runs tasks of every built-in type, with live progress.

The inputs are real and made on the spot: the package's own source files are researched,
learned and analysed, a folder is watched while files are written to it, and an objective
command is tuned. Nothing is canned.
"""

from __future__ import annotations

import ast
import csv
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.config import OrchestratorConfig
from orchestrator.core import ParallelOrchestrator
from orchestrator.models import TaskResult

# The two packages whose docstrings and sources the demo reads (orchestrator/cli/demo.py -> the root).
_ROOT = Path(__file__).resolve().parents[2]
_PACKAGES = [_ROOT / "orchestrator", _ROOT / "workers"]
_OBJECTIVE = "x = float('{x}'); y = float('{y}'); print((x - 3) ** 2 + (y + 1) ** 2 + 0.5)"
_PEAK = "import math; a = float('{a}'); print(math.sin(a) * math.exp(-((a - 1.5) ** 2) / 4))"


def demo_tasks(workdir: Path) -> list[dict[str, Any]]:
    """The demo's task specs, one list covering every built-in type several times."""
    docs = _write_docstrings(workdir / "docs")
    sources = [str(docs / "orchestrator"), str(docs / "workers")]
    watched = workdir / "watched"
    watched.mkdir()
    table = workdir / "sources.csv"
    _write_source_stats(table)
    knowledge = str(workdir / "knowledge.db")
    python = sys.executable
    return [
        {"type": "monitor", "description": "system load", "priority": 6,
         "config": {"samples": 8, "interval": 0.25, "thresholds": {"cpu_percent": 95, "memory_percent": 90}}},
        {"type": "monitor", "description": "watch a folder", "priority": 6,
         "config": {"targets": [{"kind": "path", "path": str(watched)}], "samples": 8, "interval": 0.25}},
        {"type": "research", "description": "timeouts", "priority": 7,
         "config": {"topic": "task timeout signal grace kill", "sources": sources, "max_results": 3}},
        {"type": "research", "description": "dispatch", "priority": 5,
         "config": {"topic": "priority heap dispatch worker", "sources": sources, "max_results": 3}},
        {"type": "learn", "description": "orchestrator", "priority": 4,
         "config": {"subject": "orchestrator", "material": [sources[0]], "knowledge_path": knowledge}},
        {"type": "learn", "description": "workers", "priority": 4,
         "config": {"subject": "workers", "material": [sources[1]], "knowledge_path": knowledge}},
        {"type": "optimize", "description": "minimise a bowl", "priority": 3,
         "config": {"target": {"command": [python, "-c", _OBJECTIVE]},
                    "space": {"x": [-10.0, 10.0], "y": [-10.0, 10.0]}, "iterations": 30, "seed": 1}},
        {"type": "optimize", "description": "maximise a peak", "priority": 3,
         "config": {"target": {"command": [python, "-c", _PEAK]}, "space": {"a": [-3.0, 6.0]},
                    "iterations": 25, "goal": "maximize"}},
        {"type": "analyze", "description": "source files", "priority": 5, "config": {"path": str(table)}},
        {"type": "analyze", "description": "a noisy series", "priority": 5,
         "config": {"data": [round(0.5 * i + ((i * 37) % 11) / 3, 3) for i in range(60)] + [90.0]}},
    ]  # fmt: skip


def run_demo(workers: int, console: Console | None = None) -> int:
    """Run the demo; returns the process exit code (0 when every task completed)."""
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="orch-demo-") as tmp:
        specs = demo_tasks(Path(tmp))
        progress = Progress(
            TextColumn("{task.fields[label]:<32}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}", style="dim"),
            TimeElapsedColumn(),
            console=console,
        )
        results: dict[str, TaskResult] = {}
        started = time.perf_counter()
        # The optimize tasks run the demo's own objectives as commands of this interpreter.
        config = OrchestratorConfig(max_workers=workers, idle_timeout=5.0, trusted_targets=[sys.executable])
        with progress, ParallelOrchestrator(config) as orch:
            rows = {}
            for spec in specs:
                label = f"{spec['type']}: {spec['description']}"
                row = progress.add_task(label, total=None, label=label, note="queued")
                task_id = orch.submit_task(spec, on_progress=_progress_updater(progress, row))
                rows[task_id] = (row, spec)
            writer = threading.Thread(target=_touch_files, args=(Path(tmp) / "watched",), daemon=True)
            writer.start()
            for task_id, (row, _) in rows.items():
                result = results[task_id] = orch.wait(task_id)
                note = "done" if result.success else f"[red]{result.error.kind if result.error else 'failed'}"
                progress.update(
                    row,
                    note=note,
                    completed=progress.tasks[row].total or 1,
                    total=progress.tasks[row].total or 1,
                )
        elapsed = time.perf_counter() - started
        console.print(_summary(rows, results))
        ok = sum(r.success for r in results.values())
        console.print(
            f"{ok}/{len(results)} tasks completed in {elapsed:.1f} s on {workers} worker processes."
        )
        return 0 if ok == len(results) else 1


def _progress_updater(progress: Progress, row: Any) -> Any:
    def update(report: Any) -> None:
        progress.update(row, completed=report.completed, total=report.total, note=report.message[:40])

    return update


def _touch_files(folder: Path) -> None:
    """Give the folder monitor something real to see: files created, changed and deleted."""
    for index in range(3):
        time.sleep(0.4)
        path = folder / f"note-{index}.txt"
        path.write_text(f"note {index}\n")
    time.sleep(0.3)
    (folder / "note-0.txt").write_text("changed\n" * 10)
    (folder / "note-1.txt").unlink()


def _write_docstrings(folder: Path) -> Path:
    """Write the docstrings of the package's modules as text files: real prose to read and learn."""
    for package in _PACKAGES:
        target = folder / package.name
        target.mkdir(parents=True)
        for source in sorted(package.glob("*.py")):
            tree = ast.parse(source.read_text(encoding="utf-8"))
            nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef))]
            texts = [doc for node in nodes if (doc := ast.get_docstring(node))]
            if texts:
                (target / f"{source.stem}.txt").write_text("\n\n".join(texts), encoding="utf-8")
    return folder


def _write_source_stats(path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "bytes", "lines", "functions"])
        for package in _PACKAGES:
            for source in sorted(package.glob("*.py")):
                text = source.read_text(encoding="utf-8")
                writer.writerow([source.name, len(text.encode()), text.count("\n"), text.count("def ")])


def _summary(rows: dict[str, Any], results: dict[str, TaskResult]) -> Table:
    table = Table(title="Results")
    for column in ("task", "status", "seconds", "what it found"):
        table.add_column(column, overflow="fold")
    for task_id, (_, spec) in rows.items():
        result = results[task_id]
        found = (
            _headline(spec["type"], result.data)
            if result.success
            else (result.error.message if result.error else "")
        )
        table.add_row(
            f"{spec['type']}: {spec['description']}",
            result.status.value,
            f"{result.duration_s or 0:.2f}",
            found,
        )
    return table


def _headline(task_type: str, data: Any) -> str:
    if task_type == "monitor":
        kinds = sorted({e["type"] for e in data["events"]})
        cpu = data["summary"].get("cpu_percent")
        load = f"cpu max {cpu['max']:.0f}%, " if cpu else ""
        return f"{data['samples']} samples, {load}{len(data['events'])} events {kinds}"
    if task_type == "research":
        top = data["results"][0] if data["results"] else None
        where = f"best: {Path(top['source']).name}:{top['line']} ({top['score']:.2f})" if top else "no match"
        return f"{data['sources_read']} sources read, {len(data['results'])} passages; {where}"
    if task_type == "learn":
        knowledge = data["knowledge"]
        terms = ", ".join(t["term"] for t in knowledge["top"][:4])
        return f"{knowledge['new']} new concepts ({knowledge['concepts']} in store): {terms}"
    if task_type == "optimize":
        params = ", ".join(f"{k}={v:.3g}" for k, v in data["best_params"].items())
        return f"best {data['best_value']:.4g} at {params} (improved by {data['total_improvement']:.3g})"
    insights = data["insights"][:2]
    return f"{data['rows']} rows, {len(data['columns'])} numeric columns; " + "; ".join(insights)
