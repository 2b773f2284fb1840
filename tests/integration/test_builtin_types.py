"""The five built-in task types on real inputs that the tests make."""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestrator import TaskStatus
from tests.conftest import DEADLOCK_TIMEOUT, Recorder

# What the tests' optimize and monitor configs name (`trusted_targets` refuses anything else).
TRUSTED = ["tests.helpers", "m", sys.executable]


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static HTTP server on 127.0.0.1 serving a folder."""
    root = tmp_path / "site"
    root.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def run(orch, spec: dict, timeout: float = DEADLOCK_TIMEOUT):
    return orch.wait(orch.submit_task(spec), timeout)


# ----------------------------------------------------------------------------- monitor


def test_monitor_reports_files_created_during_the_run(make_orch, tmp_path: Path, recorder: Recorder) -> None:
    orch = make_orch()
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "old.txt").write_text("old")
    orch.on("task_partial", recorder)
    spec = {
        "type": "monitor",
        "config": {"targets": [{"kind": "path", "path": str(watched)}], "interval": 0.1},
    }
    task_id = orch.submit_task(spec)
    recorder.wait_for(lambda events: len(events) >= 1)
    (watched / "new.txt").write_text("new")
    (watched / "old.txt").unlink()
    recorder.wait_for(lambda events: sum(len(e.data["events"]) for e in events) >= 2)
    orch.cancel(task_id)
    assert orch.wait(task_id, DEADLOCK_TIMEOUT).status is TaskStatus.CANCELLED
    seen = [(e["type"], Path(e["path"]).name) for event in recorder.events for e in event.data["events"]]
    assert ("created", "new.txt") in seen
    assert ("deleted", "old.txt") in seen


def test_monitor_system_process_and_command(make_orch, tmp_path: Path) -> None:
    orch = make_orch(trusted_targets=TRUSTED)
    gone = 2**22 + 12345  # beyond pid_max defaults: never a live process
    targets = [
        {"kind": "system"},
        {"kind": "process", "pid": os.getpid()},
        {"kind": "process", "pid": gone},
        {"kind": "command", "argv": [sys.executable, "-c", "raise SystemExit(3)"], "expect_exit": 0},
    ]
    thresholds = {"memory_percent": -1, f"process.{os.getpid()}.rss_mb": 1}
    config = {"targets": targets, "samples": 3, "interval": 0.05, "thresholds": thresholds}
    result = run(orch, {"type": "monitor", "config": config})
    assert result.success, result.error
    data = result.data
    assert data["samples"] == 3
    kinds = [e["type"] for e in data["events"]]
    assert kinds.count("process_gone") == 1, "a vanished process is reported once"
    assert kinds.count("unexpected_exit") == 3
    assert kinds.count("threshold") == 6
    threshold = next(e for e in data["events"] if e["type"] == "threshold")
    assert {"metric", "value", "threshold", "t", "target"} <= threshold.keys()
    exit_event = next(e for e in data["events"] if e["type"] == "unexpected_exit")
    assert exit_event["argv"][0] == sys.executable
    for metric in ("cpu_percent", "memory_percent", "disk_percent", f"process.{os.getpid()}.rss_mb"):
        summary = data["summary"][metric]
        assert summary["min"] <= summary["mean"] <= summary["max"]


# ----------------------------------------------------------------------------- research


def test_research_ranks_passages_from_files_folders_globs_and_urls(
    make_orch, tmp_path: Path, http_root
) -> None:
    base_url, site = http_root
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text(
        "# Notes\n\nCooking pasta needs salted water.\n\nQuantum entanglement links particles.\n"
    )
    (docs / "sub" / "b.txt").write_text(
        "Entanglement of quantum states is fragile.\nDecoherence destroys it.\n"
    )
    (docs / ".hidden.txt").write_text("quantum quantum quantum")
    (docs / "data.bin").write_bytes(b"\x00\x01quantum\x00")
    (tmp_path / "page.html").write_text(
        "<html><script>var quantum=1;</script><p>Quantum computers use qubits.</p></html>"
    )
    (tmp_path / "facts.json").write_text(json.dumps({"facts": ["Qubits exploit quantum superposition."]}))
    (site / "remote.txt").write_text("Remote text about quantum entanglement experiments.")
    sources = [
        str(docs),
        str(tmp_path / "*.html"),
        f"file://{tmp_path / 'facts.json'}",
        f"{base_url}/remote.txt",
        f"{base_url}/missing.txt",
        str(tmp_path / "nowhere"),
    ]
    result = run(
        orch := make_orch(),
        {"type": "research", "config": {"topic": "quantum entanglement", "sources": sources}},
    )
    assert result.success, result.error
    data = result.data
    assert data["topic"] == "quantum entanglement"
    names = [Path(r["source"]).name for r in data["results"]]
    assert ".hidden.txt" not in names, "dot-files are skipped"
    assert "pasta" not in " ".join(r["snippet"] for r in data["results"]), "no match, no result"
    scores = [r["score"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(score > 0 for score in scores)
    by_name = {Path(r["source"]).name: r for r in data["results"]}
    assert by_name["a.md"]["line"] == 5
    assert by_name["remote.txt"]["source"].startswith("http://127.0.0.1")
    assert "var quantum" not in by_name["page.html"]["snippet"]
    errors = {Path(e["source"]).name: e["error"] for e in data["errors"]}
    assert set(errors) == {"data.bin", "missing.txt", "nowhere"}
    assert data["sources_read"] == 5
    assert orch.get_status().completed == 1


def test_research_truncates_long_sources(make_orch, tmp_path: Path) -> None:
    long_file = tmp_path / "long.txt"
    long_file.write_text("filler words here\n\n" * 5000 + "needle in the haystack\n")
    config = {"topic": "needle", "sources": [str(long_file)], "max_bytes_per_source": 1000}
    result = run(make_orch(), {"type": "research", "config": config})
    assert result.success
    assert result.data["results"] == []
    assert result.data["sources_read"] == 1


# ----------------------------------------------------------------------------- learn


def test_learn_builds_an_idempotent_store(make_orch, tmp_path: Path) -> None:
    orch = make_orch()
    store = str(tmp_path / "knowledge.db")
    text = (
        "A neural network is a model made of layers of neurons. "
        "Gradient descent is an algorithm that minimises a loss function. "
        "Backpropagation computes the gradient of the loss for every neural network weight."
    )
    notes = tmp_path / "notes.txt"
    notes.write_text(text)
    first = run(
        orch, {"type": "learn", "config": {"subject": "ml", "material": [text], "knowledge_path": store}}
    )
    assert first.success, first.error
    knowledge = first.data["knowledge"]
    assert knowledge["concepts"] == knowledge["new"] > 0
    terms = {t["term"]: t for t in knowledge["top"]}
    assert "neural network" in terms
    assert terms["neural network"]["definition"].startswith("A neural network is a model")
    again = run(
        orch,
        {"type": "learn", "config": {"subject": "ml", "material": [str(notes)], "knowledge_path": store}},
    )
    assert again.data["knowledge"]["new"] == 0, "the same content as a file adds nothing"
    assert again.data["knowledge"]["concepts"] == knowledge["concepts"]
    more = "Overfitting is when a model memorises noise instead of the signal."
    grown = run(
        orch, {"type": "learn", "config": {"subject": "ml", "material": [more], "knowledge_path": store}}
    )
    after = grown.data["knowledge"]
    assert after["concepts"] == knowledge["concepts"] + after["new"]
    assert after["new"] > 0
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*) FROM documents").fetchone()[0] == 2
        assert db.execute("SELECT COUNT(*) FROM cooccurrences").fetchone()[0] > 0


# ----------------------------------------------------------------------------- optimize


def test_optimize_approaches_a_known_minimum_deterministically(make_orch, recorder: Recorder) -> None:
    orch = make_orch(handlers={}, trusted_targets=TRUSTED)
    orch.on("task_partial", recorder)
    config = {"target": "tests.helpers.objectives:bowl", "space": {"x": [-10.0, 10.0], "y": [-10.0, 10.0]},
              "iterations": 80, "seed": 3}  # fmt: skip
    first = run(orch, {"type": "optimize", "config": config})
    assert first.success, first.error
    data = first.data
    assert data["best_value"] < 0.2, data["best_params"]
    assert abs(data["best_params"]["x"] - 3) < 0.5
    assert abs(data["best_params"]["y"] + 1) < 0.5
    assert len(data["history"]) == 80
    assert data["baseline_value"] == data["history"][0]["value"]
    assert data["total_improvement"] == pytest.approx(data["baseline_value"] - data["best_value"])
    assert run(orch, {"type": "optimize", "config": config}).data == data, "same seed, same run"
    recorder.wait_for(lambda events: len(events) >= 2)
    bests = [e.data["value"] for e in recorder.events if e.task_id == first.task_id]
    assert bests == sorted(bests, reverse=True)
    assert recorder.events[0].data["iteration"] == 0


def test_optimize_maximizes_over_ints_and_choices_with_a_baseline(make_orch) -> None:
    config = {"target": "tests.helpers.objectives:pick", "space": {"n": [0, 20], "mode": ["a", "b", "c"]},
              "iterations": 60, "goal": "maximize", "baseline_params": {"n": 0, "mode": "a"}}  # fmt: skip
    data = run(make_orch(trusted_targets=TRUSTED), {"type": "optimize", "config": config}).data
    assert data["history"][0]["params"] == {"n": 0, "mode": "a"}
    assert data["best_value"] == 10
    assert data["best_params"] == {"n": 7, "mode": "b"}
    assert all(isinstance(h["params"]["n"], int) for h in data["history"])
    assert data["total_improvement"] == 10 - data["baseline_value"]


def test_optimize_a_command_target(make_orch) -> None:
    command = [sys.executable, "-c", "print('value:', (float('{x}') - 2) ** 2)"]
    config = {"target": {"command": command}, "space": {"x": [0.0, 4.0]}, "iterations": 15}
    data = run(make_orch(trusted_targets=TRUSTED), {"type": "optimize", "config": config}).data
    assert data["best_value"] < 0.5
    failing = {"target": {"command": [sys.executable, "-c", "raise SystemExit(2)"]}, "space": {"x": [0, 1]}}
    result = run(make_orch(trusted_targets=TRUSTED), {"type": "optimize", "config": failing})
    assert result.error.kind == "exception"
    assert sys.executable in result.error.message


# ----------------------------------------------------------------------------- analyze


def test_analyze_a_csv_with_a_known_trend_and_correlation(make_orch, tmp_path: Path) -> None:
    rows = [(i, 2 * i + 1, 100 - 3 * i, "x") for i in range(30)]
    rows[12] = (12, 500, 64, "x")
    table = tmp_path / "data.csv"
    table.write_text("a,b,c,label\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    result = run(make_orch(), {"type": "analyze", "config": {"path": str(table)}})
    assert result.success, result.error
    data = result.data
    assert data["rows"] == 30
    assert set(data["columns"]) == {"a", "b", "c"}, "label is not numeric"
    b = [float(r[1]) for r in rows]
    stats = data["columns"]["b"]
    assert stats["mean"] == pytest.approx(statistics.fmean(b))
    assert stats["std"] == pytest.approx(statistics.stdev(b))
    cuts = statistics.quantiles(b, n=100, method="inclusive")
    assert (stats["p50"], stats["p90"], stats["p99"]) == pytest.approx((cuts[49], cuts[89], cuts[98]))
    assert stats["outliers"] == [{"row": 12, "value": 500.0}]
    assert data["columns"]["c"]["trend"]["slope"] == pytest.approx(-3.0)
    assert data["columns"]["c"]["trend"]["r2"] == pytest.approx(1.0)
    strongest = data["correlations"][0]
    assert {strongest["a"], strongest["b"]} == {"a", "c"}
    assert strongest["r"] == pytest.approx(-1.0)
    assert [abs(c["r"]) for c in data["correlations"]] == sorted(
        (abs(c["r"]) for c in data["correlations"]), reverse=True
    )
    text = " ".join(data["insights"])
    assert "c falls" in text
    assert "a and c" in text


def test_analyze_plain_numbers_and_jsonl(make_orch, tmp_path: Path) -> None:
    orch = make_orch()
    numbers = run(orch, {"type": "analyze", "config": {"data": [1, 2, 3, 4, 100]}}).data
    assert list(numbers["columns"]) == ["value"]
    assert numbers["columns"]["value"]["outliers"] == [{"row": 4, "value": 100}]
    lines = tmp_path / "rows.jsonl"
    lines.write_text("\n".join(json.dumps({"t": i, "v": i * i}) for i in range(10)))
    data = run(orch, {"type": "analyze", "config": {"path": str(lines), "columns": ["v"]}}).data
    assert list(data["columns"]) == ["v"]
    assert data["columns"]["v"]["count"] == 10


# ----------------------------------------------------------------------------- bad config

BAD_CONFIGS = [
    pytest.param("monitor", {"interval": "fast"}, "interval", id="monitor-interval"),
    pytest.param("monitor", {"targets": [{"kind": "process"}]}, "targets", id="monitor-target"),
    pytest.param("research", {"sources": ["."]}, "topic", id="research-topic"),
    pytest.param("research", {"topic": "x", "sources": "docs"}, "sources", id="research-sources"),
    pytest.param("learn", {"subject": "s", "material": ["x"]}, "knowledge_path", id="learn-path"),
    pytest.param(
        "learn",
        {"subject": "s", "material": "x", "knowledge_path": "/tmp/k.db"},
        "material",
        id="learn-material",
    ),
    pytest.param("optimize", {"target": "tests.helpers.objectives:bowl"}, "space", id="optimize-space"),
    pytest.param(
        "optimize", {"target": "m:f", "space": {"x": [0, 1]}, "goal": "best"}, "goal", id="optimize-goal"
    ),
    pytest.param("analyze", {"path": "/no/such/file.csv"}, "path", id="analyze-path"),
    pytest.param("analyze", {"data": [1, "x"]}, "data", id="analyze-data"),
]


@pytest.mark.parametrize(("task_type", "config", "key"), BAD_CONFIGS)
def test_bad_config_names_the_key(make_orch, task_type: str, config: dict, key: str) -> None:
    orch = make_orch(max_workers=1, trusted_targets=TRUSTED)
    result = run(orch, {"type": task_type, "config": config})
    assert result.error.kind == "exception"
    assert result.error.exception_type == "ValueError"
    assert key in result.error.message
    good = {"monitor": {"samples": 1, "interval": 0.01}, "research": {"topic": "x", "sources": []},
            "learn": None, "optimize": None, "analyze": {"data": [1, 2]}}[task_type]  # fmt: skip
    if good is not None:
        after = run(orch, {"type": task_type, "config": good})
        assert after.success
        assert after.worker_pid == result.worker_pid, "the same worker runs the next task of that type"
