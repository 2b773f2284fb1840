"""``orch status`` as plain text: fast to import (no rich), and nothing is ever cut short."""

from __future__ import annotations

from typing import Any

_COLUMNS = ("id", "type", "pid", "state", "task", "progress", "done", "RSS", "CPU%")
_SCHEDULE_COLUMNS = ("schedule", "when", "next run (UTC)", "runs", "last run", "last status")


def render_text(snapshots: list[dict[str, Any]]) -> str:
    """Each orchestrator's header and workers table, as lines of text."""
    return "\n\n".join(_orchestrator(snapshot) for snapshot in snapshots)


def _orchestrator(snapshot: dict[str, Any]) -> str:
    status = snapshot["status"]
    header = (
        f"{snapshot['name']}  pid {snapshot['pid']}  up {_duration(snapshot['uptime_s'])}"
        f"{_metrics(snapshot.get('metrics_url'))}\n"
        f"workers {status['busy']} busy / {status['idle']} idle / {status['max_workers']} max   "
        f"queued {status['queued']}  running {status['running']}  completed {status['completed']}  "
        f"failed {status['failed']}  cancelled {status['cancelled']}   "
        f"{snapshot['tasks_per_s']:.1f} tasks/s (last minute)"
    )
    if status.get("state") == "failed":
        header += f"\nFAILED: {status['failure']} (it takes no new tasks; see its log)"
    rows = [_row(worker) for worker in snapshot["workers"]] or [["-", "no workers", *[""] * 7]]
    text = header + "\n" + _table([list(_COLUMNS), *rows])
    if snapshot.get("dask_workers"):
        text += "\n\n" + _dask_workers(snapshot["dask_workers"])
    if snapshot.get("schedules"):
        text += "\n\n" + render_schedules(snapshot["schedules"])
    return text


def _metrics(url: str | None) -> str:
    return f"  metrics {url}" if url else ""


def _dask_workers(nodes: list[dict[str, Any]]) -> str:
    rows = [
        [
            node["address"],
            str(node["threads"]),
            ",".join(f"{name}={amount:g}" for name, amount in sorted(node["resources"].items())) or "-",
            str(node["running"]),
        ]
        for node in nodes
    ]
    return _table([["dask worker", "threads", "resources", "running"], *rows])


def render_schedules(schedules: list[dict[str, Any]]) -> str:
    """A table of schedules: when each fires, its next run, and how its runs went."""
    rows = [
        [
            schedule["name"],
            f"every {schedule['every']:g}s"
            if schedule["every"] is not None
            else f"cron {schedule['cron']} {schedule['tz']}",
            "paused" if schedule["paused"] else _moment(schedule["next_run"]),
            str(schedule["runs"]),
            _moment(schedule["last_run"]),
            schedule["last_status"] or "-",
        ]
        for schedule in schedules
    ]
    return _table([list(_SCHEDULE_COLUMNS), *rows])


def _moment(iso: str | None) -> str:
    return "-" if iso is None else iso.replace("T", " ")[:19]


def _row(worker: dict[str, Any]) -> list[str]:
    return [
        str(worker["worker_id"]),
        worker["type"] or "-",
        str(worker["pid"]),
        worker["state"],
        ", ".join(worker["current_tasks"]) or "-",
        _progress(worker.get("progress")),
        str(worker["tasks_completed"]),
        "-" if worker["rss_bytes"] is None else f"{worker['rss_bytes'] / 2**20:.0f} MiB",
        "-" if worker["cpu_percent"] is None else f"{worker['cpu_percent']:.0f}",
    ]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _progress(progress: dict[str, Any] | None) -> str:
    if not progress:
        return "-"
    total = progress.get("total")
    amount = f"{progress['completed']:g}/{total:g}" if total else f"{progress['completed']:g}"
    return f"{amount} {progress.get('message', '')}".strip()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
