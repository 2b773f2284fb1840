"""Plans: validation of a graph of plan-local task specs, and ``$id.path`` result references.

Pure functions, no processes: a plan is checked whole (ids, dependencies, cycles, references)
before any of it is queued, and references are substituted at dispatch time from the results of
the task's dependencies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from orchestrator.errors import OrchestratorError

PLAN_ID: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
# `$$` is a literal dollar; `$id` optionally followed by `.field` / `.0` segments is a reference.
_REFERENCE: Final = re.compile(r"\$\$|\$([A-Za-z0-9_][A-Za-z0-9_-]*)((?:\.[A-Za-z0-9_-]+)*)")


class PlanError(OrchestratorError, ValueError):
    """A plan rejected before anything was queued: the message names the problem."""


def references(value: Any) -> set[str]:
    """Every plan id that ``value`` (a config, walked recursively) refers to."""
    found: set[str] = set()
    for text in _strings(value):
        found.update(match.group(1) for match in _REFERENCE.finditer(text) if match.group(1))
    return found


def substitute(value: Any, lookup: Callable[[str], Any]) -> Any:
    """``value`` with every reference replaced, ``lookup(plan_id)`` giving a dependency's data.

    A string that is exactly one reference becomes the referenced value itself; a reference
    inside a longer string becomes its text (``str`` of scalars, JSON of containers).

    Raises:
        PlanError: a reference's path does not exist in the referenced data.
    """
    if isinstance(value, dict):
        return {key: substitute(item, lookup) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, lookup) for item in value]
    if not isinstance(value, str) or "$" not in value:
        return value
    whole = _REFERENCE.fullmatch(value)
    if whole and whole.group(1):
        return _resolve(whole, lookup)
    return _REFERENCE.sub(lambda m: "$" if not m.group(1) else _as_text(_resolve(m, lookup)), value)


def validate_plan(tasks: list[dict[str, Any]], known: Iterable[str] = ()) -> list[str]:
    """Check a plan's ids, dependencies, cycles and references; return its ids in dependency order.

    ``known`` are plan ids already submitted (when a running plan is extended).

    Raises:
        PlanError: naming the first problem found.
    """
    known_ids = set(known)
    ids: list[str] = []
    for index, task in enumerate(tasks):
        plan_id = task.get("id") if isinstance(task, dict) else None
        if not isinstance(plan_id, str) or not PLAN_ID.match(plan_id):
            raise PlanError(f"task {index}: id {plan_id!r} must match {PLAN_ID.pattern}")
        if plan_id in ids or plan_id in known_ids:
            raise PlanError(f"duplicate id {plan_id!r}")
        ids.append(plan_id)
    edges = {task["id"]: _dependencies(task) for task in tasks}
    for plan_id, depends_on in edges.items():
        for dependency in depends_on:
            if dependency not in edges and dependency not in known_ids:
                raise PlanError(f"task {plan_id!r} depends on unknown id {dependency!r}")
    for task in tasks:
        missing = sorted(references(task.get("config", {})) - set(edges[task["id"]]))
        if missing:
            raise PlanError(f"task {task['id']!r} refers to ${missing[0]}, which is not among its depends_on")
    return _topological_order(edges)


def _dependencies(task: Mapping[str, Any]) -> list[str]:
    depends_on = task.get("depends_on", [])
    if not isinstance(depends_on, list) or not all(isinstance(d, str) for d in depends_on):
        raise PlanError(f"task {task['id']!r}: depends_on must be a list of plan ids")
    return list(dict.fromkeys(depends_on))


def _topological_order(edges: dict[str, list[str]]) -> list[str]:
    """Ids with every dependency first; raise `PlanError` naming one cycle in dependency order."""
    order: list[str] = []
    state: dict[str, str] = {}
    for start in edges:
        if start in state:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = [start]
        state[start] = "open"
        while stack:
            node, index = stack[-1]
            deps = [d for d in edges[node] if d in edges]
            if index < len(deps):
                stack[-1] = (node, index + 1)
                nxt = deps[index]
                if state.get(nxt) == "open":
                    cycle = [*path[path.index(nxt) :], nxt]
                    raise PlanError("cycle: " + " -> ".join(reversed(cycle)))
                if nxt not in state:
                    state[nxt] = "open"
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                stack.pop()
                path.pop()
                state[node] = "done"
                order.append(node)
    return order


def _resolve(match: re.Match[str], lookup: Callable[[str], Any]) -> Any:
    value = lookup(match.group(1))
    for segment in filter(None, match.group(2).split(".")):
        try:
            value = value[int(segment)] if isinstance(value, list) else value[segment]
        except (KeyError, IndexError, TypeError, ValueError):
            raise PlanError(f"reference {match.group(0)}: no {segment!r} in the data it walks") from None
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
