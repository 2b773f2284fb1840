"""Built-in type ``monitor``: sample the system, processes, paths or a command at an interval.

Config: ``targets`` (list of ``{"kind": "system"}``, ``{"kind": "process", "pid": N}``,
``{"kind": "path", "path": P}``, ``{"kind": "command", "argv": [...], "expect_exit": 0}``;
default: the system), ``interval`` seconds (1.0), ``samples`` and/or ``duration`` (neither: run
until cancelled), ``thresholds`` (metric -> limit, e.g. ``{"cpu_percent": 90,
"process.<pid>.rss_mb": 500}``), ``disk`` (the filesystem for ``disk_percent``, default ``/``).
Each sample is reported with ``ctx.progress`` and ``ctx.emit({"sample", "events"})``.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from workers.builtin.options import count, option, positive
from workers.context import TaskContext

_COMMAND_TIMEOUT = 30.0


def run(ctx: TaskContext) -> dict[str, Any]:
    """Sample every target until ``samples`` or ``duration`` is reached (or until cancelled)."""
    import psutil

    config = ctx.config
    targets = _targets(config)
    interval = positive(config, "interval", 1.0)
    samples = count(config, "samples", None)
    duration = option(config, "duration", (int, float), None)
    thresholds = option(config, "thresholds", dict, {})
    disk = option(config, "disk", str, "/")
    if not os.path.exists(disk):
        raise ValueError(f"config key 'disk': {disk!r} does not exist")
    watcher = _Watcher(psutil, targets, thresholds, disk)
    events: list[dict[str, Any]] = []
    values: dict[str, list[float]] = {}
    started = time.monotonic()
    taken = 0
    while True:
        sample, new_events = watcher.sample()
        taken += 1
        events.extend(new_events)
        for metric, value in sample["metrics"].items():
            values.setdefault(metric, []).append(value)
        ctx.emit({"sample": sample, "events": new_events})
        ctx.progress(taken, samples, f"sample {taken}: {len(new_events)} event(s)")
        elapsed = time.monotonic() - started
        if (samples is not None and taken >= samples) or (duration is not None and elapsed >= duration):
            break
        time.sleep(interval)
    summary = {metric: _summary(series) for metric, series in values.items()}
    return {"samples": taken, "events": events, "summary": summary}


def _summary(series: list[float]) -> dict[str, float]:
    low, high = min(series), max(series)
    # fsum rounding can put the mean of equal values a hair outside them
    return {"min": low, "max": high, "mean": min(high, max(low, math.fsum(series) / len(series)))}


def _targets(config: dict[str, Any]) -> list[dict[str, Any]]:
    targets = option(config, "targets", list, [{"kind": "system"}])
    for target in targets:
        kind = target.get("kind") if isinstance(target, dict) else None
        if kind == "process" and not isinstance(target.get("pid"), int):
            raise ValueError(f"config key 'targets': a process target needs an int 'pid': {target!r}")
        if kind == "path" and not isinstance(target.get("path"), str):
            raise ValueError(f"config key 'targets': a path target needs a str 'path': {target!r}")
        if kind == "command" and not (isinstance(target.get("argv"), list) and target["argv"]):
            raise ValueError(f"config key 'targets': a command target needs a non-empty 'argv': {target!r}")
        if kind not in ("system", "process", "path", "command"):
            raise ValueError(
                f"config key 'targets': unknown target {target!r}; kinds are system, process, path, command"
            )
    return targets  # type: ignore[no-any-return]


class _Watcher:
    """Holds what one sample must compare with the previous one (files seen, processes)."""

    def __init__(
        self, psutil: Any, targets: list[dict[str, Any]], thresholds: dict[str, Any], disk: str
    ) -> None:
        self._psutil = psutil
        self._targets = targets
        self._thresholds = thresholds
        self._disk = disk
        self._files: dict[str, dict[str, tuple[int, int]]] = {}
        self._processes: dict[int, Any] = {}
        self._gone: set[int] = set()
        psutil.cpu_percent(interval=None)  # the first reading is meaningless; start the clock
        for target in targets:
            if target["kind"] == "path":
                self._files[target["path"]] = _scan(target["path"])
            elif target["kind"] == "process":
                self._processes[target["pid"]] = self._open_process(target["pid"])

    def sample(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        now = time.time()
        metrics: dict[str, float] = {}
        events: list[dict[str, Any]] = []
        for target in self._targets:
            kind = target["kind"]
            if kind == "system":
                metrics.update(self._system())
            elif kind == "process":
                metrics.update(self._process(target["pid"], now, events))
            elif kind == "path":
                events.extend(self._path(target["path"], now))
            else:
                metrics.update(self._command(target, now, events))
        for metric, limit in self._thresholds.items():
            value = metrics.get(metric)
            if value is not None and value > limit:
                events.append(
                    {
                        "t": now,
                        "type": "threshold",
                        "target": metric,
                        "metric": metric,
                        "value": value,
                        "threshold": limit,
                    }
                )
        return {"t": now, "metrics": metrics}, events

    def _system(self) -> dict[str, float]:
        psutil = self._psutil
        metrics = {
            "cpu_percent": float(psutil.cpu_percent(interval=None)),
            "memory_percent": float(psutil.virtual_memory().percent),
            "disk_percent": float(psutil.disk_usage(self._disk).percent),
        }
        if hasattr(os, "getloadavg"):
            metrics["load_1m"] = os.getloadavg()[0]
        return metrics

    def _open_process(self, pid: int) -> Any:
        try:
            process = self._psutil.Process(pid)
            process.cpu_percent(interval=None)
            return process
        except self._psutil.Error:
            return None

    def _process(self, pid: int, now: float, events: list[dict[str, Any]]) -> dict[str, float]:
        process = self._processes.get(pid)
        try:
            if process is None or not process.is_running():
                raise self._psutil.NoSuchProcess(pid)
            with process.oneshot():
                return {
                    f"process.{pid}.rss_mb": process.memory_info().rss / 2**20,
                    f"process.{pid}.cpu_percent": float(process.cpu_percent(interval=None)),
                }
        except self._psutil.Error:
            if pid not in self._gone:
                self._gone.add(pid)
                events.append({"t": now, "type": "process_gone", "target": f"process:{pid}", "pid": pid})
            return {}

    def _path(self, root: str, now: float) -> list[dict[str, Any]]:
        before, after = self._files[root], _scan(root)
        self._files[root] = after
        target = f"path:{root}"
        events = [
            {"t": now, "type": "created", "target": target, "path": p}
            for p in sorted(after.keys() - before.keys())
        ]
        events += [
            {"t": now, "type": "deleted", "target": target, "path": p}
            for p in sorted(before.keys() - after.keys())
        ]
        events += [
            {"t": now, "type": "modified", "target": target, "path": p}
            for p in sorted(after.keys() & before.keys())
            if after[p] != before[p]
        ]
        return events

    def _command(self, target: dict[str, Any], now: float, events: list[dict[str, Any]]) -> dict[str, float]:
        argv = [str(a) for a in target["argv"]]
        expected = target.get("expect_exit", 0)
        started = time.monotonic()
        try:
            completed = subprocess.run(argv, capture_output=True, timeout=_COMMAND_TIMEOUT, check=False)
            code: int | None = completed.returncode
            detail = completed.stderr.decode(errors="replace").strip()[-200:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            code, detail = None, str(exc)
        name = os.path.basename(argv[0])
        if code != expected:
            events.append(
                {
                    "t": now,
                    "type": "unexpected_exit",
                    "target": f"command:{name}",
                    "argv": argv,
                    "exit_code": code,
                    "expected": expected,
                    "detail": detail,
                }
            )
        return {f"command.{name}.seconds": time.monotonic() - started}


def _scan(root: str) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (or ``root`` itself) with its modification time and size."""
    found: dict[str, tuple[int, int]] = {}
    path = Path(root)
    candidates = path.rglob("*") if path.is_dir() else [path]
    for entry in candidates:
        try:
            info = entry.stat()
        except OSError:
            continue
        if entry.is_file():
            found[str(entry)] = (info.st_mtime_ns, info.st_size)
    return found
