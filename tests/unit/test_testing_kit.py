"""`workers.testing`: handlers tested without an orchestrator, as users test theirs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from workers import TaskCancelled, TaskContext, current_context
from workers.builtin import analyze, learn, monitor, optimize, research
from workers.testing import FakeContext, HandlerFailed, run_handler


def reports(ctx: TaskContext) -> dict[str, Any]:
    ctx.progress(1, 2, "half")
    ctx.emit({"partial": (1, 2)})
    ctx.publish("news", {"at": 1})
    ctx.progress(2, 2)
    return {"config": ctx.config, "inside": current_context() is ctx}


async def reports_async(ctx: TaskContext) -> dict[str, Any]:
    await asyncio.sleep(0)
    ctx.progress(1, 1, "done")
    return {"inside": current_context() is ctx}


def stops_when_asked(ctx: TaskContext) -> str:
    ctx.check_cancelled()
    return "ran on"


def returns_a_set(ctx: TaskContext) -> Any:
    return {1, 2}


def coordinator(ctx: TaskContext) -> list[Any]:
    ids = [ctx.submit({"type": "square", "config": {"x": x}}) for x in (2, 3)]
    ids.append(ctx.submit({"type": "broken"}))
    return [(result.success, result.data, result.error and result.error.message) for result in ctx.wait(ids)]


def test_what_a_handler_reports_is_recorded_after_the_round_trip() -> None:
    run = run_handler(reports, {"n": (1, 2)})
    assert run.result == {"config": {"n": [1, 2]}, "inside": True}  # tuples travel as lists
    assert run.context.progress_reports == [(1, 2, "half"), (2, 2, "")]
    assert run.context.partials == [{"partial": [1, 2]}]
    assert run.context.published == [("news", {"at": 1})]
    assert current_context() is None


def test_an_async_handler_and_a_path() -> None:
    assert run_handler(reports_async).result == {"inside": True}
    assert run_handler("tests.unit.test_testing_kit:reports_async").context.progress_reports == [
        (1, 1, "done")
    ]


def test_a_cancelled_context_stops_the_handler_as_in_a_worker() -> None:
    ctx = FakeContext()
    assert run_handler(stops_when_asked, context=ctx).result == "ran on"
    ctx.cancel()
    assert ctx.cancelled
    assert ctx.stop_reason == "cancelled"
    with pytest.raises(TaskCancelled):
        run_handler(stops_when_asked, context=ctx)


def test_a_result_that_cannot_travel_fails_as_in_production() -> None:
    with pytest.raises(HandlerFailed) as caught:
        run_handler(returns_a_set)
    assert caught.value.error.kind == "serialization"
    assert caught.value.error.message.startswith("the handler's result is not msgpack-serialisable")
    assert "set" in caught.value.error.message


def test_a_path_that_does_not_import_fails_as_the_worker_reports_it() -> None:
    with pytest.raises(HandlerFailed) as caught:
        run_handler("no_such_module_here:run")
    assert caught.value.error.kind == "exception"
    assert (
        caught.value.error.message
        == "handler 'no_such_module_here:run': No module named 'no_such_module_here'"
    )
    assert caught.value.error.exception_type == "ModuleNotFoundError"


def test_bad_config_and_bad_emits_are_refused() -> None:
    with pytest.raises(ValueError, match="config is not msgpack-serialisable"):
        run_handler(reports, {"when": object()})
    ctx = FakeContext()
    with pytest.raises(TypeError, match="data is not msgpack-serialisable"):
        ctx.publish("news", {1, 2})
    assert ctx.published == []


def test_calls_that_need_an_orchestrator_say_so() -> None:
    ctx = FakeContext()
    with pytest.raises(RuntimeError, match=r"ctx\.submit needs a running orchestrator.*children="):
        ctx.submit({"type": "echo"})
    with pytest.raises(RuntimeError, match=r"ctx\.wait needs a running orchestrator"):
        ctx.wait(["x"])
    with pytest.raises(RuntimeError, match=r"ctx\.subscribe needs a running orchestrator"):
        ctx.subscribe("news")


def test_canned_children_answer_submit_and_wait() -> None:
    def broken(spec: dict[str, Any]) -> Any:
        raise LookupError("no such thing")

    children = {"square": lambda spec: spec["config"]["x"] ** 2, "broken": broken}
    run = run_handler(coordinator, children=children, task_id="parent-1")
    assert run.result == [[True, 4, None], [True, 9, None], [False, None, "no such thing"]]
    assert [spec["type"] for spec in run.context.submitted] == ["square", "square", "broken"]
    with pytest.raises(KeyError, match="no answer for a task of type 'echo'"):
        run.context.submit({"type": "echo"})
    with pytest.raises(KeyError, match="no task 'other' was submitted"):
        run.context.wait(["other"])


# ----------------------------------------------------------------- the built-in types


def test_monitor() -> None:
    result = run_handler(monitor.run, {"samples": 2, "interval": 0.01}).result
    assert result["samples"] == 2
    assert {"min", "max", "mean"} <= set(next(iter(result["summary"].values())))


def test_research(tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_text("Quantum entanglement links particles.\n\nCooking pasta needs water.\n")
    run = run_handler(research.run, {"topic": "quantum entanglement", "sources": [str(source)]})
    assert run.result["sources_read"] == 1
    assert "entanglement" in run.result["results"][0]["snippet"]
    assert run.context.progress_reports[-1][:2] == (1, 1)


def test_learn(tmp_path: Path) -> None:
    config = {
        "subject": "ml",
        "material": ["Gradient descent minimises a loss."],
        "knowledge_path": str(tmp_path / "k.db"),
    }
    knowledge = run_handler(learn.run, config).result["knowledge"]
    assert knowledge["new"] == knowledge["concepts"] > 0


def test_optimize() -> None:
    config = {
        "target": "tests.helpers.objectives:bowl",
        "space": {"x": [-10.0, 10.0], "y": [-10.0, 10.0]},
        "iterations": 30,
    }
    result = run_handler(optimize.run, config).result
    assert result["best_value"] <= result["baseline_value"]
    assert len(result["history"]) == 30


def test_analyze() -> None:
    run = run_handler(analyze.run, {"data": [{"a": 1, "b": 2}, {"a": 2, "b": 4}, {"a": 3, "b": 6}]})
    assert run.result["rows"] == 3
    assert run.result["columns"]["a"]["mean"] == 2
    assert run.context.progress_reports[-1] == (3, 3, "correlations computed")
