"""Built-in type ``analyze``: statistics, outliers, trends and correlations of tabular data.

Config: ``data`` (a list of numbers, which form one column named ``value``, or of records) or
``path`` (CSV, JSON or JSONL); ``columns`` (default: every numeric column, i.e. one whose every
non-empty value parses as a number). Per column: count, mean, sample std, min, max, p50/p90/p99
(linear interpolation), outliers outside [Q1 - 1.5 IQR, Q3 + 1.5 IQR] with their 0-based rows, and
a least-squares trend over row order; Pearson's r for every pair of columns; plain-sentence
insights for strong trends (r^2 >= 0.5) and the strongest correlation (|r| >= 0.5).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from itertools import combinations
from pathlib import Path
from typing import Any

from workers.builtin.options import option
from workers.context import TaskContext

STRONG = 0.5


def run(ctx: TaskContext) -> dict[str, Any]:
    """Load the rows, then describe each numeric column and how the columns relate."""
    config = ctx.config
    rows = _load(config)
    columns = _numeric_columns(rows, option(config, "columns", list, None))
    ctx.progress(0, len(columns) + 1, f"{len(rows)} rows, {len(columns)} numeric columns")
    described = {}
    for index, (name, cells) in enumerate(columns.items(), start=1):
        described[name] = describe(cells)
        ctx.progress(index, len(columns) + 1, f"column {name!r} described")
    correlations = _correlations(columns)
    ctx.progress(len(columns) + 1, len(columns) + 1, "correlations computed")
    return {
        "rows": len(rows),
        "columns": described,
        "correlations": correlations,
        "insights": _insights(described, correlations),
    }


def describe(cells: list[float | None]) -> dict[str, Any]:
    """Statistics of one column; ``cells`` holds None where a row has no value."""
    values = [v for v in cells if v is not None]
    if not values:
        return {"count": 0}
    stats: dict[str, Any] = {
        "count": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }
    if len(values) > 1:
        percentiles = statistics.quantiles(values, n=100, method="inclusive")
        stats.update(p50=percentiles[49], p90=percentiles[89], p99=percentiles[98])
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    else:
        stats.update(p50=values[0], p90=values[0], p99=values[0])
        low = high = values[0]
    stats["outliers"] = [
        {"row": row, "value": v} for row, v in enumerate(cells) if v is not None and not low <= v <= high
    ]
    stats["trend"] = _trend([(row, v) for row, v in enumerate(cells) if v is not None])
    return stats


def _trend(points: list[tuple[int, float]]) -> dict[str, float]:
    if len(points) < 2:
        return {"slope": 0.0, "r2": 0.0}
    xs, ys = [float(x) for x, _ in points], [y for _, y in points]
    slope, _ = statistics.linear_regression(xs, ys)
    r = _pearson(xs, ys)
    return {"slope": slope, "r2": r * r}


def _pearson(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return 0.0
    return statistics.correlation(xs, ys)


def _correlations(columns: dict[str, list[float | None]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for a, b in combinations(columns, 2):
        pairs = [
            (x, y) for x, y in zip(columns[a], columns[b], strict=True) if x is not None and y is not None
        ]
        r = _pearson([x for x, _ in pairs], [y for _, y in pairs])
        found.append({"a": a, "b": b, "r": r})
    found.sort(key=lambda c: -abs(c["r"]))
    return found


def _insights(described: dict[str, Any], correlations: list[dict[str, Any]]) -> list[str]:
    insights = []
    for name, stats in described.items():
        trend = stats.get("trend")
        if trend and trend["r2"] >= STRONG:
            way = "rises" if trend["slope"] > 0 else "falls"
            insights.append(
                f"{name} {way} steadily over the rows "
                f"({trend['slope']:+.4g} per row, r^2 = {trend['r2']:.2f})"
            )
        if stats.get("outliers"):
            insights.append(f"{name} has {len(stats['outliers'])} outlier(s) outside 1.5 IQR")
    if correlations and abs(correlations[0]["r"]) >= STRONG:
        top = correlations[0]
        way = "positively" if top["r"] > 0 else "negatively"
        insights.append(f"{top['a']} and {top['b']} are strongly {way} correlated (r = {top['r']:.2f})")
    return insights


def _load(config: dict[str, Any]) -> list[dict[str, Any]]:
    if "data" in config:
        data = option(config, "data", list)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in data):
            return [{"value": v} for v in data]
        if all(isinstance(v, dict) for v in data):
            return data  # type: ignore[no-any-return]
        raise ValueError("config key 'data' must be a list of numbers or a list of records")
    path = Path(option(config, "path", str))
    try:
        # Untranslated newlines: a quoted CSV field may hold line breaks of its own.
        with path.open(encoding="utf-8", newline="") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"config key 'path': cannot read {str(path)!r}: {exc}") from exc
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(io.StringIO(text, newline="")))
    if path.suffix.lower() == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    loaded = json.loads(text)
    if isinstance(loaded, list):
        return [r if isinstance(r, dict) else {"value": r} for r in loaded]
    raise ValueError(f"config key 'path': {str(path)!r} holds no list of records")


def _numeric_columns(rows: list[dict[str, Any]], wanted: list[Any] | None) -> dict[str, list[float | None]]:
    names = list(dict.fromkeys(key for row in rows for key in row))
    if wanted is not None:
        missing = [w for w in wanted if w not in names]
        if missing:
            raise ValueError(f"config key 'columns': no such column(s): {missing}")
        names = [str(w) for w in wanted]
    columns = {}
    for name in names:
        cells = [_number(row.get(name)) for row in rows]
        raw = [row.get(name) for row in rows]
        numeric = all(c is not None or v in (None, "") for c, v in zip(cells, raw, strict=True))
        if numeric and any(c is not None for c in cells):
            columns[name] = cells
        elif wanted is not None:
            raise ValueError(f"config key 'columns': column {name!r} is not numeric")
    return columns


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
