"""The ``orch`` command line. Commands are thin: they parse, then call the public API or a socket.

Only click, the standard library and msgpack are imported up front; the orchestrator's core,
pydantic, psutil and rich are imported inside the commands that need them, so that
``orch status`` answers fast. Exit codes: 0 success, 1 a task failed (or, for ``status``, nothing
is running), 2 usage or connection errors, 3 a runtime failure.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from orchestrator.cli.client import BusyError, ClientError, Endpoint, choose, discover


class OrchCliError(click.ClickException):
    """A runtime failure reported by a command (exit code 3; 2 stays click's usage error)."""

    exit_code = 3


class ConnectionProblem(click.ClickException):
    """No orchestrator to talk to, several and no --name, or a refused request (exit code 2)."""

    exit_code = 2


class NothingRunning(click.ClickException):
    """``orch status`` found no orchestrator (exit code 1)."""

    exit_code = 1


_NAME = click.option(
    "--name", "-n", default=None, help="the orchestrator's name (default: the only one running)"
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="parallel-orchestrator")
def main() -> None:
    """parallel-orchestrator: run typed tasks on worker processes, by priority."""


def _endpoint(name: str | None) -> Endpoint:
    try:
        return choose(name)
    except ClientError as exc:
        raise ConnectionProblem(str(exc)) from exc


def _ask(endpoint: Endpoint, op: str, **arguments: Any) -> Any:
    try:
        return endpoint.request(op, **arguments)
    except ClientError as exc:
        raise ConnectionProblem(str(exc)) from exc


# --------------------------------------------------------------------------------- status


@main.command()
@_NAME
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--watch", is_flag=True, help="redraw live until Ctrl-C")
@click.option("--journal", "journal_path", default=None, help="show a journal's task counts (read-only)")
def status(name: str | None, as_json: bool, watch: bool, journal_path: str | None) -> None:
    """Show every running orchestrator: workers, queue, tasks, memory, throughput."""
    if journal_path is not None:
        _journal_status(journal_path, as_json)
        return
    if watch:
        _watch_status(name)
        return
    snapshots = _snapshots(name)
    if as_json:
        click.echo(json.dumps({"orchestrators": snapshots}))
        return
    from orchestrator.cli.status_text import render_text

    click.echo(render_text(snapshots))


def _journal_status(path: str, as_json: bool) -> None:
    from orchestrator.errors import OrchestratorError
    from orchestrator.journal import journal_counts

    try:
        counts = journal_counts(path)
    except OrchestratorError as exc:
        raise NothingRunning(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(counts))
        return
    by_status = "  ".join(f"{status} {count}" for status, count in counts["counts"].items())
    click.echo(f"{counts['journal']}: {counts['total']} tasks   {by_status}")


def _snapshots(name: str | None) -> list[dict[str, Any]]:
    try:
        found = discover()
    except ClientError as exc:
        raise ConnectionProblem(str(exc)) from exc
    for path in found.stale:
        click.echo(f"removed a stale control socket: {path}", err=True)
    for path in found.busy:
        click.echo(f"busy (did not take a connection in time; a stopped host?): {path}", err=True)
    live = found.live
    if not live and found.busy:
        raise ConnectionProblem("every orchestrator found is busy")
    if name is not None:
        live = [e for e in live if e.name == name]
        if not live:
            raise NothingRunning(f"no orchestrator named {name!r} is running")
    if not live:
        raise NothingRunning("no orchestrator is running")
    snapshots, busy = [], 0
    for endpoint in live:
        try:
            snapshot = endpoint.request("status")
        except ClientError as exc:
            click.echo(f"skipped {endpoint.name}: {exc}", err=True)
            busy += isinstance(exc, BusyError)
            continue
        snapshots.append(snapshot)
    if not snapshots and busy:
        raise ConnectionProblem("every orchestrator found is busy")
    return snapshots


def _watch_status(name: str | None) -> None:
    from orchestrator.cli.status_view import watch

    with contextlib.suppress(KeyboardInterrupt):
        watch(lambda: _snapshots(name))


# --------------------------------------------------------------------------------- run


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML or JSON file of OrchestratorConfig fields",
)
@_NAME
@click.option(
    "--grace",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="seconds running tasks get at SIGTERM/SIGINT",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="serve Prometheus /metrics on this port (0: any free one; host: metrics_host, 127.0.0.1)",
)
def run(config_file: Path | None, name: str | None, grace: float, metrics_port: int | None) -> None:
    """Run a standalone orchestrator in the foreground until SIGTERM or Ctrl-C."""
    from orchestrator.cli.daemon import run_daemon
    from orchestrator.errors import OrchestratorError

    fields = _load_config(config_file)
    if metrics_port is not None:
        fields["metrics_port"] = metrics_port
    try:
        run_daemon(fields, name, grace)
    except OrchestratorError as exc:
        raise OrchCliError(str(exc)) from exc


def _load_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    text = path.read_bytes()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            loaded = tomllib.loads(text.decode())
        else:
            loaded = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise click.BadParameter(f"{path} must hold a table/object of OrchestratorConfig fields")
    return loaded


# --------------------------------------------------------------------------------- submit


@main.command()
@click.argument("task_type")
@click.option("--config", "config_json", default=None, help="the task's config as JSON")
@click.option(
    "--config-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the task's config in a JSON file",
)
@click.option("--priority", type=click.IntRange(0, 10), default=None, help="0..10, 10 most urgent")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, help="seconds")
@_NAME
@click.option("--wait", is_flag=True, help="print the final result as one JSON line")
@click.option("--follow", is_flag=True, help="like --wait, with live progress on stderr")
def submit(
    task_type: str,
    config_json: str | None,
    config_file: Path | None,
    priority: int | None,
    timeout: float | None,
    name: str | None,
    wait: bool,
    follow: bool,
) -> None:
    """Submit a task; print its id (and, with --wait or --follow, its result)."""
    if config_json is not None and config_file is not None:
        raise click.UsageError("give --config or --config-file, not both")
    spec: dict[str, Any] = {"type": task_type, "config": _task_config(config_json, config_file)}
    if priority is not None:
        spec["priority"] = priority
    if timeout is not None:
        spec["timeout"] = timeout
    endpoint = _endpoint(name)
    task_id = _ask(endpoint, "submit", spec=spec)["task_id"]
    click.echo(task_id)
    if wait or follow:
        _follow(endpoint, task_id, show=follow)
        result = _ask(endpoint, "result", task_id=task_id)
        click.echo(json.dumps(result))
        raise SystemExit(0 if result.get("status") == "completed" else 1)


def _task_config(config_json: str | None, config_file: Path | None) -> Any:
    text = config_json if config_json is not None else config_file.read_text() if config_file else "{}"
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"the task config is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise click.BadParameter("the task config must be a JSON object")
    return config


def _follow(endpoint: Endpoint, task_id: str, show: bool) -> None:
    """Block until the task's final event; with ``show``, draw progress and partials on stderr."""
    try:
        events = endpoint.watch(task_id)
        if not show:
            for _ in events:
                pass
            return
        from orchestrator.cli.status_view import follow_progress

        follow_progress(events, task_id)
    except ClientError as exc:
        raise ConnectionProblem(str(exc)) from exc


# --------------------------------------------------------------------------------- one task


@main.command()
@click.argument("task_id")
@_NAME
def result(task_id: str, name: str | None) -> None:
    """Print a task's result as JSON (its status while it is not final)."""
    data = _ask(_endpoint(name), "result", task_id=task_id)
    click.echo(json.dumps(data))
    if data.get("status") in ("error", "cancelled"):
        raise SystemExit(1)


@main.command()
@click.argument("task_id")
@_NAME
def cancel(task_id: str, name: str | None) -> None:
    """Cancel a queued or running task."""
    if _ask(_endpoint(name), "cancel", task_id=task_id)["cancelled"]:
        click.echo(f"cancelled {task_id}")
    else:
        click.echo(f"{task_id} had already ended", err=True)
        raise SystemExit(1)


@main.command()
@click.option(
    "--status", "status_filter", type=click.Choice(["queued", "running", "completed", "error", "cancelled"])
)
@click.option("--type", "type_filter", default=None, help="only tasks of this type")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@_NAME
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def tasks(
    status_filter: str | None, type_filter: str | None, limit: int, name: str | None, as_json: bool
) -> None:
    """List tasks, newest first."""
    arguments: dict[str, Any] = {"limit": limit}
    if status_filter:
        arguments["status"] = status_filter
    if type_filter:
        arguments["type"] = type_filter
    rows = _ask(_endpoint(name), "tasks", **arguments)
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        line = f"{row['task_id']}  {row['type']:<12} {row['status']:<10} p{row['priority']:<3}"
        click.echo(f"{line} {row['description']}")


@main.command()
@_NAME
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def schedules(name: str | None, as_json: bool) -> None:
    """List the recurring tasks of an orchestrator and when each runs next."""
    rows = _ask(_endpoint(name), "status")["schedules"]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no schedules")
        return
    from orchestrator.cli.status_text import render_schedules

    click.echo(render_schedules(rows))


# --------------------------------------------------------------------------------- bench


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Run the benchmarks against the peers (options as `python -m benchmarks --help`)."""
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        suite = importlib.import_module("benchmarks.suite")
    except ImportError as exc:
        raise OrchCliError("the benchmarks come with the source checkout: run this from its root") from exc
    sys.argv = ["orch bench", *ctx.args]
    suite.main()


# --------------------------------------------------------------------------------- demo


@main.command()
@click.option("--workers", default=4, show_default=True, type=click.IntRange(1, 64), help="worker processes")
def demo(workers: int) -> None:
    """Run tasks of every built-in type with live progress, then print a summary."""
    from orchestrator.cli.demo import run_demo
    from orchestrator.errors import OrchestratorError

    started = time.monotonic()
    try:
        code = run_demo(workers)
    except OrchestratorError as exc:
        raise OrchCliError(str(exc)) from exc
    if code:
        click.echo(f"some demo tasks failed ({time.monotonic() - started:.1f} s)", err=True)
    sys.exit(code)
