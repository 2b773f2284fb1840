"""What users rely on, on both backends: local processes, and processes on a Dask cluster.

The Dask side runs against one session cluster (``LocalCluster(processes=True)`` on 127.0.0.1)
whose workers offer every test task type as a resource, reached through ``dask_address`` as a
remote cluster would be. These tests are skipped only when ``distributed`` is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy
import psutil
import pytest

from orchestrator import (
    OrchestratorError,
    ParallelOrchestrator,
    TaskStatus,
    UnknownTaskTypeError,
    WorkerCrashedError,
)
from orchestrator.config import BUILTIN_HANDLERS
from tests import conftest
from tests.conftest import DEADLOCK_TIMEOUT, Recorder, Release
from tests.helpers import functions
from tests.helpers.metrics import labels_of, scrape, value
from tests.helpers.tasks import HANDLERS
from workers.calls import CALL_TYPE

TYPES = sorted({*HANDLERS, *BUILTIN_HANDLERS, CALL_TYPE})
ROOT = Path(__file__).resolve().parents[2]


class SharedCluster:
    """A Dask scheduler and workers started as separate programs, like a remote cluster."""

    def __init__(self, folder: Path, workers: int = 2, threads: int = 2) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        scheduler_file = folder / "scheduler.json"
        self._start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(scheduler_file))  # fmt: skip
        deadline = time.monotonic() + DEADLOCK_TIMEOUT
        while not scheduler_file.exists() or not scheduler_file.read_text():
            assert time.monotonic() < deadline, "the Dask scheduler did not start"
            time.sleep(0.05)
        self.scheduler_address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(workers):
            self.add_worker(threads)

    def add_worker(self, threads: int) -> subprocess.Popen[bytes]:
        """Start one more Dask worker offering every test type (its nanny's process is returned)."""
        resources = ",".join(f"{name}={threads}" for name in TYPES)
        return self._start("worker", self.scheduler_address, "--host", "127.0.0.1", "--nthreads", str(threads),
                           "--no-dashboard", "--resources", resources)  # fmt: skip

    def _start(self, program: str, *args: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", f"distributed.cli.dask_{program}", *args]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def workers(self) -> int:
        import distributed

        with distributed.Client(self.scheduler_address, timeout=DEADLOCK_TIMEOUT) as client:
            return len(client.scheduler_info()["workers"])

    def close(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(DEADLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedCluster]:
    """Two Dask workers of two threads each, offering every test task type twice."""
    distributed = pytest.importorskip("distributed", reason="the dask extra (distributed) is not installed")
    cluster = SharedCluster(tmp_path_factory.mktemp("dask"))
    with distributed.Client(cluster.scheduler_address, timeout=DEADLOCK_TIMEOUT) as client:
        client.wait_for_workers(2, timeout=DEADLOCK_TIMEOUT)
    conftest.SHARED_PROCESSES.update(
        found.pid
        for process in cluster.processes
        for found in [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    )
    conftest.SHARED_SHM.update(os.listdir("/dev/shm"))
    yield cluster
    cluster.close()


@pytest.fixture(params=["local", "dask"])
def backend(
    request: pytest.FixtureRequest, make_orch: Callable[..., ParallelOrchestrator]
) -> Callable[..., ParallelOrchestrator]:
    """Build an orchestrator on the backend under test (4 workers' worth of capacity)."""
    if request.param == "local":
        return lambda **overrides: make_orch(max_workers=4, **overrides)
    cluster = request.getfixturevalue("dask_cluster")
    return lambda **overrides: make_orch(backend="dask", dask_address=cluster.scheduler_address, **overrides)


def test_submit_and_wait(backend) -> None:
    orch = backend()
    ids = [orch.submit_task({"type": "echo", "config": {"i": i}}) for i in range(20)]
    assert [orch.wait(task_id, DEADLOCK_TIMEOUT).data["config"]["i"] for task_id in ids] == list(range(20))
    assert orch.get_status().max_workers == 4


def test_priority_order_with_the_pool_saturated(backend, release: Release, recorder: Recorder) -> None:
    orch = backend(worker_type_limits={"blocker": 1})
    orch.on("task_started", recorder)
    first = orch.submit_task({"type": "blocker", "config": release.config})
    recorder.wait_for(lambda events: len(events) == 1)
    priorities = [*range(11), 5, 5]
    random.Random(3).shuffle(priorities)
    ids = {
        orch.submit_task({"type": "blocker", "priority": p, "config": release.config}): p for p in priorities
    }
    release.open()
    assert all(orch.wait(task_id, DEADLOCK_TIMEOUT).success for task_id in [first, *ids])
    recorder.wait_for(lambda events: len(events) == 1 + len(ids))
    started = [e.task_id for e in recorder.events[1:]]
    assert [ids[t] for t in started] == sorted(priorities, reverse=True)
    assert [t for t in started if ids[t] == 5] == [t for t in ids if ids[t] == 5]


def test_typed_routing(backend) -> None:
    orch = backend()
    echoes = [orch.submit_task({"type": "echo"}) for _ in range(6)]
    steps = [orch.submit_task({"type": "steps"}) for _ in range(6)]
    pids = {kind: {orch.wait(t, DEADLOCK_TIMEOUT).worker_pid for t in ids} for kind, ids in
            (("echo", echoes), ("steps", steps))}  # fmt: skip
    assert not pids["echo"] & pids["steps"], "a worker never changes type"
    types = {w.pid: w.type for w in orch.get_workers()}
    assert all(types.get(pid) in (None, kind) for kind, found in pids.items() for pid in found)


def test_progress_and_partial_events_in_order(backend, recorder: Recorder) -> None:
    orch = backend()
    for name in ("task_started", "task_progress", "task_partial", "task_completed"):
        orch.on(name, recorder)
    stepped = orch.submit_task({"type": "steps", "config": {"n": 3}})
    streamed = orch.submit_task({"type": "partials", "config": {"n": 4}})
    assert orch.wait(stepped, DEADLOCK_TIMEOUT).data == 3
    assert orch.wait(streamed, DEADLOCK_TIMEOUT).data == 4
    recorder.wait_for(lambda events: sum(e.event == "task_completed" for e in events) == 2)
    assert recorder.names(streamed) == ["task_started", *["task_partial"] * 4, "task_completed"]
    names = recorder.names(stepped)
    assert names[0] == "task_started"
    assert names[-1] == "task_completed"
    assert set(names[1:-1]) == {"task_progress"}
    partials = [e.data for e in recorder.events if e.event == "task_partial"]
    assert partials == [{"i": i} for i in range(4)]


def test_a_timeout_really_stops_the_handler(backend, tmp_path: Path) -> None:
    orch = backend()
    log = tmp_path / "ticks"
    result = orch.wait(orch.submit_task({"type": "ticker", "timeout": 0.5, "config": {"log": str(log)}}),
                       DEADLOCK_TIMEOUT)  # fmt: skip
    assert result.error.kind == "timeout"
    assert result.duration_s < 0.5 + 0.25 + 0.25  # the bound, plus this shared machine's noise
    # The result goes out at the timeout; the handler stops a moment later, and its worker is then idle.
    deadline = time.monotonic() + DEADLOCK_TIMEOUT
    while any(w.state == "busy" for w in orch.get_workers()):
        assert time.monotonic() < deadline, orch.get_workers()
        time.sleep(0.01)
    size = log.stat().st_size
    time.sleep(0.3)  # a handler still running would tick 30 times meanwhile
    assert log.stat().st_size == size


def test_cancel_a_running_task(backend, recorder: Recorder) -> None:
    orch = backend()
    orch.on("task_started", recorder)
    task_id = orch.submit_task({"type": "sleep", "config": {"seconds": 60}})
    recorder.wait_for(lambda events: len(events) == 1)
    assert orch.cancel(task_id)
    assert orch.wait(task_id, DEADLOCK_TIMEOUT).status is TaskStatus.CANCELLED
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success


def test_a_crash_then_the_next_task_runs(backend) -> None:
    orch = backend()
    crashed = orch.wait(orch.submit_task({"type": "exit_hard"}), DEADLOCK_TIMEOUT)
    assert crashed.error.kind == "worker_crashed"
    assert orch.wait(orch.submit_task({"type": "exit_hard"}), DEADLOCK_TIMEOUT).error.kind == "worker_crashed"
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success


def test_retries(backend) -> None:
    orch = backend()
    result = orch.wait(orch.submit_task({"type": "crash_once", "retries": 1}), DEADLOCK_TIMEOUT)
    assert result.success
    assert result.attempts == 2


def test_a_diamond_dag(backend) -> None:
    orch = backend()
    plan = orch.submit_plan(
        [
            {"id": "a", "type": "deps", "config": {"value": 1}},
            {"id": "b", "type": "deps", "depends_on": ["a"], "config": {"value": "$a.value"}},
            {"id": "c", "type": "deps", "depends_on": ["a"], "config": {"value": 2}},
            {"id": "d", "type": "deps", "depends_on": ["b", "c"], "config": {"value": 3}},
        ]
    )
    results = plan.wait(DEADLOCK_TIMEOUT)
    assert all(r.success for r in results.values())
    assert results["b"].data["value"] == 1
    assert set(results["d"].data["deps"]) == {plan.ids["b"], plan.ids["c"]}


def test_a_group_with_fan_in(backend) -> None:
    orch = backend()
    members = [orch.submit_task({"type": "deps", "group": "g", "config": {"value": i}}) for i in range(5)]
    fan_in = orch.submit_task({"type": "deps", "depends_on_group": "g"})
    seen = orch.wait(fan_in, DEADLOCK_TIMEOUT).data["deps"]
    assert sorted(seen[m]["value"] for m in members) == list(range(5))


# ----------------------------------------------------------------- Dask only


LOCAL_CLUSTER_HOST = """
import json, sys
import psutil
sys.path.insert(0, {root!r})
from orchestrator import ParallelOrchestrator
from tests.helpers.metrics import labels_of, scrape, value
from tests.helpers.tasks import HANDLERS

if __name__ == "__main__":
    with ParallelOrchestrator(backend="dask", max_workers=2, handlers=HANDLERS, control_socket=False) as orch:
        ok = orch.wait(orch.submit_task({{"type": "echo"}}), 30).success
        listening = [
            [conn.laddr.ip, conn.laddr.port]
            for process in [psutil.Process(), *psutil.Process().children(recursive=True)]
            for conn in process.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
        workers = [w.worker_id for w in orch.get_workers()]
        print(json.dumps({{"ok": ok, "listening": listening, "max_workers": orch.get_status().max_workers,
                          "workers": workers, "pids": [w.pid for w in orch.get_workers()]}}))
"""


def test_a_local_cluster_listens_on_loopback_only(tmp_path: Path) -> None:
    # In a process of its own: a local cluster leaves multiprocessing's resource tracker behind in
    # its host until that host exits, which this test process must not.
    pytest.importorskip("distributed", reason="the dask extra (distributed) is not installed")
    script = tmp_path / "host.py"
    script.write_text(LOCAL_CLUSTER_HOST.format(root=str(ROOT)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["ok"]
    assert found["max_workers"] == 2
    assert all(worker_id.startswith("tcp://127.0.0.1:") for worker_id in found["workers"])
    assert found["listening"], "the scheduler, nannies and workers listen somewhere"
    assert {ip for ip, _ in found["listening"]} == {"127.0.0.1"}
    assert not {8786, 8787} & {port for _, port in found["listening"]}
    assert not [pid for pid in found["pids"] if psutil.pid_exists(pid)]


def test_an_unreachable_scheduler_is_named(no_leaks) -> None:
    pytest.importorskip("distributed", reason="the dask extra (distributed) is not installed")
    orch = ParallelOrchestrator(backend="dask", dask_address="tcp://127.0.0.1:9", dask_connect_timeout=1.0,
                                control_socket=False)  # fmt: skip
    with pytest.raises(OrchestratorError, match=r"tcp://127\.0\.0\.1:9"):
        orch.initialize()


def test_without_distributed_the_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    orch = ParallelOrchestrator(backend="dask", control_socket=False)
    with pytest.raises(OrchestratorError, match=r"parallel-orchestrator\[dask\]"):
        orch.initialize()


def test_a_type_no_worker_offers_is_refused(make_orch, dask_cluster) -> None:
    orch = make_orch(backend="dask", dask_address=dask_cluster.scheduler_address,
                     handlers={**HANDLERS, "unoffered": "tests.helpers.tasks:echo"})  # fmt: skip
    with pytest.raises(UnknownTaskTypeError, match="no Dask worker offers the task type 'unoffered'"):
        orch.submit_task({"type": "unoffered"})
    assert orch.get_status().queued == 0


def test_shutdown_leaves_the_shared_cluster_running(make_orch, dask_cluster) -> None:
    orch = make_orch(backend="dask", dask_address=dask_cluster.scheduler_address)
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success
    node_pids = [w.pid for w in orch.get_workers()]
    orch.shutdown()
    assert not [
        pid for pid in node_pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
    ]
    assert dask_cluster.workers() == 2
    assert os.getpid() > 0


def test_a_coordinator_gathers_its_children(backend) -> None:
    orch = backend()
    result = orch.wait(orch.submit_task({"type": "coordinator", "config": {"children": 8, "mode": "as_completed"}}),
                       DEADLOCK_TIMEOUT)  # fmt: skip
    assert result.success, result.error
    assert result.data == list(range(8))


def test_orch_status_lists_the_dask_workers(make_orch, dask_cluster) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import main as cli

    orch = make_orch(backend="dask", dask_address=dask_cluster.scheduler_address, name="on-dask",
                     control_socket=True)  # fmt: skip
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success
    shown = CliRunner().invoke(cli, ["status", "--name", "on-dask"])
    assert shown.exit_code == 0, shown.output
    assert "dask worker" in shown.output
    assert shown.output.count("tcp://127.0.0.1:") >= 2
    assert "echo=2" in shown.output


def test_a_handler_that_does_not_import_on_its_node_names_both(make_orch, dask_cluster) -> None:
    orch = make_orch(backend="dask", dask_address=dask_cluster.scheduler_address)
    error = orch.wait(orch.submit_task({"type": "bad_import"}), DEADLOCK_TIMEOUT).error
    assert error.kind == "exception"
    assert "no_such_module" in error.message
    assert " on tcp://127.0.0.1:" in error.message


def test_idle_node_processes_retire_and_come_back_on_demand(
    make_orch, dask_cluster, recorder: Recorder
) -> None:
    orch = make_orch(backend="dask", dask_address=dask_cluster.scheduler_address, idle_timeout=0.2)
    orch.on("worker_exited", recorder)
    first = orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT)
    recorder.wait_for(lambda events: len(events) == 4)  # the four threads' processes, once idle
    assert {e.reason for e in recorder.events} == {"idle"}
    assert orch.get_workers() == []
    again = orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT)
    assert again.success
    assert again.worker_pid != first.worker_pid


def test_memory_and_cpu_limits_hold_on_dask_nodes(make_orch, dask_cluster) -> None:
    orch = make_orch(backend="dask", dask_address=dask_cluster.scheduler_address, max_memory_mb=200,
                     max_cpu_seconds=0.5, resource_check_interval=0.1)  # fmt: skip
    hog = orch.wait(orch.submit_task({"type": "allocate", "config": {"mb": 400}}), DEADLOCK_TIMEOUT)
    assert hog.error.kind == "memory_limit"
    assert "over max_memory_mb=200" in hog.error.message
    spinner = orch.wait(orch.submit_task({"type": "busy_cpu"}), DEADLOCK_TIMEOUT)
    assert spinner.error.kind == "timeout"
    assert "max_cpu_seconds=0.5" in spinner.error.message
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success


def test_an_attempt_on_a_dask_worker_that_leaves_is_retried_elsewhere(
    make_orch, tmp_path: Path, recorder: Recorder
) -> None:
    import distributed

    cluster = SharedCluster(tmp_path, workers=1, threads=1)
    try:
        orch = make_orch(backend="dask", dask_address=cluster.scheduler_address)
        orch.on("task_started", recorder)
        task_id = orch.submit_task({"type": "logged", "retries": 1,
                                    "config": {"log": str(tmp_path / "runs"), "hang": True}})  # fmt: skip
        recorder.wait_for(lambda events: len(events) == 1)
        with distributed.Client(cluster.scheduler_address, timeout=DEADLOCK_TIMEOUT) as client:
            (left,) = client.scheduler_info()["workers"]
        # The Dask worker dies (its nanny starts a new one, at a new address).
        nanny = psutil.Process(cluster.processes[1].pid)
        (dask_worker,) = [c for c in nanny.children() if "spawn_main" in " ".join(c.cmdline())]
        dask_worker.kill()
        result = orch.wait(task_id, DEADLOCK_TIMEOUT)
        assert result.success
        assert result.attempts == 2
        recorder.wait_for(lambda events: len(events) == 2)
        assert recorder.events[1].pid != recorder.events[0].pid
        with distributed.Client(cluster.scheduler_address, timeout=DEADLOCK_TIMEOUT) as client:
            (joined,) = client.scheduler_info()["workers"]
        assert joined != left
        assert [w.worker_id for w in orch.get_workers()] == [f"{joined}/0"]
        orch.shutdown()
    finally:
        cluster.close()


def test_metrics_count_on_both_backends(backend) -> None:
    orch = backend(metrics_port=0)
    ids = [orch.submit_task({"type": "echo"}) for _ in range(5)]
    crash = orch.submit_task({"type": "exit_hard"})
    assert all(orch.wait(task_id, DEADLOCK_TIMEOUT).success for task_id in ids)
    assert orch.wait(crash, DEADLOCK_TIMEOUT).error.kind == "worker_crashed"
    samples = scrape(orch.metrics_url)
    assert value(samples, "orchestrator_tasks_completed_total", type="echo") == 5
    assert value(samples, "orchestrator_tasks_failed_total", type="exit_hard", kind="worker_crashed") == 1
    assert value(samples, "orchestrator_worker_crashes_total", type="exit_hard") == 1
    assert labels_of(samples, "orchestrator_info")[0]["backend"] == orch.config.backend


# ------------------------------------------------------------ the Dask boundary, tried as a hostile node


def test_the_callback_authkey_is_on_no_command_line(make_orch, dask_cluster) -> None:
    """Every local user of a node can read /proc/PID/cmdline; the key travels on stdin."""
    orch = make_orch(backend="dask", dask_address=dask_cluster.scheduler_address)
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success
    key = orch._supervisor._pool._authkey.hex()
    seen = 0
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(process.info["cmdline"] or [])
            if "workers.remote" in cmdline:
                seen += 1
            assert key not in cmdline
            assert key not in "".join(f"{k}={v}" for k, v in process.environ().items())
    assert seen >= 4, "the node processes were found"


def test_hostile_callers_do_not_keep_node_processes_out(make_orch, dask_cluster, recorder: Recorder) -> None:
    """A silent client, a wrong key and garbage used to end (or block for ever) the accept loop."""
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    orch = make_orch(backend="dask", dask_address=dask_cluster.scheduler_address)
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success
    address = orch._supervisor._pool._listener.getsockname()[:2]
    silent = socket.create_connection(address)
    garbage = socket.create_connection(address)
    garbage.sendall(b"GET / HTTP/1.0\r\n\r\n" * 100)
    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        Client(address, authkey=b"not the key")
    try:
        orch.on("worker_exited", recorder)
        workers = orch.get_workers()
        for worker in workers:  # every node process dies: each must be replaced
            psutil.Process(worker.pid).kill()
        recorder.wait_for(lambda events: len(events) == len(workers))
        ids = [orch.submit_task({"type": "echo", "config": {"n": n}}) for n in range(8)]
        assert all(orch.wait(task_id, DEADLOCK_TIMEOUT).success for task_id in ids)
    finally:
        silent.close()
        garbage.close()


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        ([[21, "lots", 1.0]], "Usage.rss is a str"),
        ([[12, "$task", float("nan"), None, "x"]], "TaskProgress.completed is nan"),
        ([[16, "$task"]], "did not ask back"),
    ],
    ids=["usage-str", "progress-nan", "revoked-unasked"],
)
def test_a_lying_node_process_is_expelled(make_orch, dask_cluster, frames, why) -> None:
    orch = make_orch(backend="dask", dask_address=dask_cluster.scheduler_address)
    result = orch.wait(orch.submit_task({"type": "liar", "config": {"frames": frames}}), DEADLOCK_TIMEOUT)
    assert result.error is not None
    assert result.error.kind == "worker_crashed"
    assert why in result.error.message
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success


def test_a_node_cannot_name_a_shared_memory_block(make_orch, dask_cluster) -> None:
    """Shared memory is off on Dask: a block reference from a node is refused outright."""
    orch = make_orch(backend="dask", dask_address=dask_cluster.scheduler_address)
    name = f"orch_{orch._block_namespace}_h_0"
    spec = {"type": "forged_block", "config": {"name": name, "size": 10}}
    result = orch.wait(orch.submit_task(spec), DEADLOCK_TIMEOUT)
    assert result.error is not None
    assert result.error.kind == "serialization"
    assert "may send none" in result.error.message


def test_fuzzed_messages_from_dask_nodes_never_end_the_supervisor(make_orch, dask_cluster) -> None:
    """The lies of the hostile suite, told by processes on Dask nodes (fewer: each may cost a node
    process, which its Dask worker then starts again)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.hostile.test_lying_workers import worker_frames

    orch = make_orch(backend="dask", dask_address=dask_cluster.scheduler_address)

    @settings(
        max_examples=max(100, settings().max_examples // 10), suppress_health_check=[HealthCheck.too_slow]
    )
    @given(frames=st.lists(worker_frames(), min_size=1, max_size=2))
    def lie(frames: list[list[object]]) -> None:
        flat = [frame for group in frames for frame in group]
        result = orch.wait(orch.submit_task({"type": "liar", "config": {"frames": flat}}), DEADLOCK_TIMEOUT)
        assert result.status in (TaskStatus.COMPLETED, TaskStatus.ERROR)
        assert orch.get_status().state == "running"

    lie()
    assert orch.wait(orch.submit_task({"type": "echo"}), DEADLOCK_TIMEOUT).success


def test_functions_run_as_calls_on_both_backends(backend) -> None:
    orch = backend()
    executor = orch.executor(initializer=functions.remember_init, initargs=("model",))
    assert executor.submit(functions.square, 7).result(DEADLOCK_TIMEOUT) == 49
    assert list(executor.map(functions.add, range(10), range(10), chunksize=3)) == list(range(0, 20, 2))
    assert executor.submit(functions.initialized).result(DEADLOCK_TIMEOUT) == ("model",)
    with pytest.raises(ValueError, match="no such file"):
        executor.submit(functions.raise_value_error, "no such file").result(DEADLOCK_TIMEOUT)
    with pytest.raises(WorkerCrashedError):
        executor.submit(functions.exit_hard, 3).result(DEADLOCK_TIMEOUT)
    doubled = executor.submit(functions.double_in_place, numpy.arange(300_000)).result(DEADLOCK_TIMEOUT)
    assert doubled[-1] == 2 * 299_999
    executor.shutdown()


def test_handler_logs_reach_the_host_on_both_backends(backend, caplog: pytest.LogCaptureFixture) -> None:
    orch = backend()
    task_id = orch.submit_task({"type": "log_some"})
    result = orch.wait(task_id, DEADLOCK_TIMEOUT)
    records = [r for r in caplog.records if r.pathname == "(worker)" and r.__dict__.get("task_id") == task_id]
    assert [(r.name, r.levelname) for r in records] == [
        ("mypkg.summarize", "INFO"),
        ("mypkg.summarize", "WARNING"),
        ("mypkg.summarize", "ERROR"),
        ("task.log_some", "INFO"),
    ]
    assert {r.worker_pid for r in records} == {result.worker_pid}
    assert "KeyError: 'source c'" in (records[2].exc_text or "")
