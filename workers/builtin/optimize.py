"""Built-in type ``optimize``: tune the parameters of a target function or command.

Config: ``target`` (``"module:function"``, called as ``function(**params)`` and returning a
number, or ``{"command": [...]}`` with ``{name}`` placeholders, whose last number on stdout is the
metric); ``space`` (``{name: [low, high]}``: a range, of ints if both are ints; ``{name:
{"choices": [...]}}`` or any other list: a set of choices); ``iterations`` (50); ``goal``
(``minimize`` or ``maximize``); ``seed`` (0); ``baseline_params`` (optional first point).
Random search that narrows around the best point found (local refinement). Deterministic for a
given seed.
"""

from __future__ import annotations

import random
import re
import subprocess
from collections.abc import Callable
from typing import Any

from workers.builtin.options import count, option
from workers.context import TaskContext
from workers.registry import resolve_handler

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_EXPLORE_SHARE = 0.3  # the first 30% of iterations sample the whole space; the rest refine
_COMMAND_TIMEOUT = 300.0


class _Dimension:
    def __init__(self, name: str, spec: Any) -> None:
        self.name = name
        self.choices: list[Any] | None = None
        self.low = self.high = 0.0
        self.integer = False
        if isinstance(spec, dict) and isinstance(spec.get("choices"), list) and spec["choices"]:
            self.choices = spec["choices"]
        elif isinstance(spec, list) and len(spec) == 2 and all(_is_number(v) for v in spec):
            self.low, self.high = sorted(spec)
            self.integer = all(isinstance(v, int) for v in spec)
        elif isinstance(spec, list) and spec:
            self.choices = spec
        else:
            raise ValueError(
                f"config key 'space': {name!r} must be [low, high], {{'choices': [...]}} or a list of choices"
            )

    def sample(self, rng: random.Random) -> Any:
        if self.choices is not None:
            return rng.choice(self.choices)
        if self.integer:
            return rng.randint(int(self.low), int(self.high))
        return rng.uniform(self.low, self.high)

    def near(self, value: Any, radius: float, rng: random.Random) -> Any:
        if self.choices is not None:
            return rng.choice(self.choices) if rng.random() < radius else value
        span = (self.high - self.low) * radius
        moved = min(self.high, max(self.low, value + rng.gauss(0, span)))
        return round(moved) if self.integer else moved


def run(ctx: TaskContext) -> dict[str, Any]:
    """Evaluate ``iterations`` points, random first then near the best, and report the best."""
    config = ctx.config
    target = option(config, "target", (str, dict))
    space = option(config, "space", dict)
    if not space:
        raise ValueError("config key 'space' must name at least one parameter")
    dimensions = [_Dimension(name, spec) for name, spec in space.items()]
    iterations = count(config, "iterations", 50) or 50
    goal = option(config, "goal", str, "minimize")
    if goal not in ("minimize", "maximize"):
        raise ValueError(f"config key 'goal' must be 'minimize' or 'maximize', not {goal!r}")
    rng = random.Random(option(config, "seed", int, 0))
    evaluate = _objective(target)
    baseline = option(config, "baseline_params", dict, None) or {d.name: d.sample(rng) for d in dimensions}
    better: Callable[[float, float], bool] = (
        (lambda a, b: a < b) if goal == "minimize" else (lambda a, b: a > b)
    )
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    explore = max(1, int(iterations * _EXPLORE_SHARE))
    for iteration in range(iterations):
        if iteration == 0:
            params = baseline
        elif iteration < explore or best is None:
            params = {d.name: d.sample(rng) for d in dimensions}
        else:
            radius = 0.25 * (1 - (iteration - explore) / max(1, iterations - explore)) + 0.01
            params = {d.name: d.near(best["params"][d.name], radius, rng) for d in dimensions}
        value = evaluate(params)
        history.append({"params": params, "value": value})
        if best is None or better(value, best["value"]):
            best = {"params": params, "value": value}
            ctx.emit({"iteration": iteration, "params": params, "value": value})
        ctx.progress(iteration + 1, iterations, f"iteration {iteration + 1}: best {best['value']:.6g}")
    assert best is not None
    baseline_value = history[0]["value"]
    improvement = baseline_value - best["value"] if goal == "minimize" else best["value"] - baseline_value
    return {
        "best_params": best["params"],
        "best_value": best["value"],
        "baseline_value": baseline_value,
        "total_improvement": improvement,
        "history": history,
    }


def _objective(target: Any) -> Callable[[dict[str, Any]], float]:
    if isinstance(target, str):
        function: Callable[..., Any] = resolve_handler(target)

        def call(params: dict[str, Any]) -> float:
            value = function(**params)
            if not _is_number(value):
                raise ValueError(f"target {target!r} returned {value!r}, not a number")
            return float(value)

        return call
    argv = target.get("command")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise ValueError("config key 'target': a command target is {'command': [str, ...]}")

    def run_command(params: dict[str, Any]) -> float:
        line = [arg.format(**params) for arg in argv]
        done = subprocess.run(line, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False)
        numbers = _NUMBER.findall(done.stdout)
        if done.returncode != 0 or not numbers:
            raise RuntimeError(
                f"command {line!r} exited {done.returncode} and printed "
                f"{'no number' if not numbers else numbers[-1]}: {done.stderr.strip()[-200:]}"
            )
        return float(numbers[-1])

    return run_command


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
