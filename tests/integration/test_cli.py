"""The control socket and the orch command line, in-process and with real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner

from orchestrator import OrchestratorError, ParallelOrchestrator
from orchestrator.cli import main
from orchestrator.wire import recv_frame, send_frame
from tests.conftest import DEADLOCK_TIMEOUT, Recorder, Release
from tests.helpers.control import connect
from tests.helpers.tasks import HANDLERS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "run"
    monkeypatch.setenv("ORCH_RUNTIME_DIR", str(directory))
    return directory


def ask(path: Path, request: dict) -> dict:
    with connect(path) as sock:
        send_frame(sock, request)
        reply = recv_frame(sock)
    assert reply is not None
    return reply


def test_socket_lives_with_the_orchestrator(make_orch, runtime: Path) -> None:
    orch = make_orch(name="svc")
    path = runtime / "svc.sock"
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(OrchestratorError, match=r"svc\.sock"):
        ParallelOrchestrator(name="svc").initialize()
    orch.shutdown()
    assert not path.exists(), "removed before shutdown() returns"


def test_unnamed_orchestrators_never_collide(make_orch, runtime: Path) -> None:
    make_orch()
    make_orch()
    names = sorted(p.name for p in runtime.glob("*.sock"))
    assert names == [f"default-{os.getpid()}-2.sock", f"default-{os.getpid()}.sock"]


def test_a_stale_socket_is_replaced_and_reported(make_orch, runtime: Path) -> None:
    runtime.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(runtime / "ghost.sock"))
    stale.close()
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1
    assert "stale" in result.output
    assert not (runtime / "ghost.sock").exists()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(runtime / "svc.sock"))
    stale.close()
    make_orch(name="svc")
    assert ask(runtime / "svc.sock", {"op": "status"})["ok"]


def test_a_runtime_dir_of_another_user_is_refused(runtime: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give the directory away")
    runtime.mkdir(mode=0o700)
    os.chown(runtime, 65534, 65534)
    with pytest.raises(OrchestratorError, match="belongs to uid 65534"):
        ParallelOrchestrator(name="x").initialize()


def test_status_shows_busy_workers_and_json_matches(
    make_orch, runtime: Path, release: Release, recorder: Recorder
) -> None:
    orch = make_orch(name="busy", max_workers=2)
    orch.on("task_started", recorder)
    ids = [orch.submit_task({"type": "blocker", "config": release.config}) for _ in range(2)]
    recorder.wait_for(lambda events: len(events) == 2)
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 0, result.output
    assert "busy" in result.output
    for worker in orch.get_workers():
        assert str(worker.pid) in result.output
        assert worker.current_task in result.output
    result = CliRunner().invoke(main, ["status", "--json", "--name", "busy"])
    (snapshot,) = json.loads(result.output)["orchestrators"]
    expected = orch.get_status().model_dump(mode="json")
    for key in ("workers", "busy", "idle", "queued", "running", "completed", "max_workers"):
        assert snapshot["status"][key] == expected[key]
    assert {w["pid"] for w in snapshot["workers"]} == {w.pid for w in orch.get_workers()}
    assert set(snapshot["workers"][0]) >= {
        "worker_id",
        "pid",
        "type",
        "state",
        "current_task",
        "rss_bytes",
        "cpu_percent",
    }
    release.open()
    for task_id in ids:
        orch.wait(task_id, DEADLOCK_TIMEOUT)


def test_status_with_nothing_running(runtime: Path) -> None:
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1
    assert "no orchestrator is running" in result.output
    result = CliRunner().invoke(main, ["submit", "echo"])
    assert result.exit_code == 2


def test_submit_result_tasks_cancel_in_process(make_orch, runtime: Path, release: Release) -> None:
    make_orch(name="one", handlers=HANDLERS, max_workers=1)
    runner = CliRunner()
    done = runner.invoke(main, ["submit", "echo", "--config", '{"x": 1}', "--wait"])
    assert done.exit_code == 0, done.output
    task_id, line = done.output.strip().splitlines()
    assert json.loads(line)["data"]["config"] == {"x": 1}
    failed = runner.invoke(main, ["submit", "fail", "--wait"])
    assert failed.exit_code == 1
    assert json.loads(failed.output.splitlines()[1])["error"]["kind"] == "exception"
    unknown = runner.invoke(main, ["submit", "nope"])
    assert unknown.exit_code == 2
    assert "unknown task type" in unknown.output
    blocked = runner.invoke(
        main, ["submit", "blocker", "--config", json.dumps(release.config)]
    ).output.strip()
    queued = runner.invoke(main, ["submit", "blocker", "--config", json.dumps(release.config)]).output.strip()
    assert runner.invoke(main, ["cancel", queued]).exit_code == 0
    assert runner.invoke(main, ["cancel", queued]).exit_code == 1
    listing = runner.invoke(main, ["tasks", "--json"])
    assert [row["task_id"] for row in json.loads(listing.output)][:2] == [queued, blocked]
    assert runner.invoke(main, ["result", task_id]).exit_code == 0
    release.open()


def test_several_orchestrators_need_a_name(make_orch, runtime: Path) -> None:
    make_orch(name="a")
    make_orch(name="b")
    result = CliRunner().invoke(main, ["tasks"])
    assert result.exit_code == 2
    assert "a, b" in result.output
    assert CliRunner().invoke(main, ["tasks", "--name", "b"]).exit_code == 0


def test_malformed_and_oversized_requests(make_orch, runtime: Path) -> None:
    make_orch(name="svc")
    path = runtime / "svc.sock"
    with connect(path) as sock:
        sock.sendall(struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
        assert "malformed" in recv_frame(sock)["error"]
    with connect(path) as sock:
        sock.sendall(struct.pack(">I", 64 * 2**20))
        reply = recv_frame(sock)
        assert "cap" in reply["error"]
        assert recv_frame(sock) is None, "the connection is closed without reading the body"
    with connect(path) as sock:
        body = msgpack.packb([1, 2])
        sock.sendall(struct.pack(">I", len(body)) + body)
        assert "not a map" in recv_frame(sock)["error"]
    assert "unknown op" in ask(path, {"op": "explode"})["error"]
    assert "limit" in ask(path, {"op": "tasks", "limit": 0})["error"]
    assert "task_id" in ask(path, {"op": "result"})["error"]
    assert ask(path, {"op": "status"})["ok"], "the server keeps serving"


def test_an_idle_client_blocks_nobody(make_orch, runtime: Path) -> None:
    make_orch(name="svc")
    path = runtime / "svc.sock"
    with connect(path):
        started = time.monotonic()
        assert ask(path, {"op": "status"})["ok"]
        assert time.monotonic() - started < 5


def test_watch_streams_a_tasks_events_until_it_ends(make_orch, runtime: Path) -> None:
    orch = make_orch(name="svc", handlers=HANDLERS)
    path = runtime / "svc.sock"
    task_id = orch.submit_task({"type": "sleep", "config": {"seconds": 0.3}})
    with connect(path) as sock:
        send_frame(sock, {"op": "watch", "task_id": task_id})
        assert recv_frame(sock)["ok"]
        events = []
        while (frame := recv_frame(sock)) is not None:
            events.append(frame["event"])
    assert events[-1] == "task_completed"


def test_another_user_is_refused(make_orch, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to become another user")
    shared = Path(tempfile.mkdtemp(prefix="orch-uid-test-"))
    try:
        os.chmod(shared, 0o755)
        monkeypatch.setenv("ORCH_RUNTIME_DIR", str(shared / "run"))
        make_orch(name="svc")
        os.chmod(shared / "run", 0o755)
        path = shared / "run" / "svc.sock"
        os.chmod(path, 0o666)
        reply = _connect_as_nobody(path)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert reply == {"ok": False, "error": "permission denied"}


def _connect_as_nobody(path: Path) -> object:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            with connect(path) as sock:
                reply: object = recv_frame(sock)
        except Exception as exc:  # noqa: BLE001 - reported to the parent as data
            reply = {"child error": repr(exc)}
        os.write(write_end, json.dumps(reply).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        reply = json.loads(reader.read())
    os.waitpid(pid, 0)
    return reply


def test_orch_run_and_submit_end_to_end(tmp_path: Path, runtime: Path) -> None:
    config = tmp_path / "orch.toml"
    config.write_text('max_workers = 2\n[handlers]\necho = "tests.helpers.tasks:echo"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", "--config", str(config), "--name", "svc", "--grace", "2"],
        stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert "running" in daemon.stdout.readline()
        submit = subprocess.run(
            [sys.executable, "-m", "orchestrator", "submit", "echo", "--config", '{"n": 7}', "--wait"],
            capture_output=True, text=True, env=env, timeout=DEADLOCK_TIMEOUT,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stderr
        _, line = submit.stdout.strip().splitlines()
        assert json.loads(line)["data"]["config"] == {"n": 7}
        assert (runtime / "svc.sock").exists()
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(DEADLOCK_TIMEOUT) == 0
        daemon.stdout.close()
    assert not (runtime / "svc.sock").exists()


def test_status_command_is_light() -> None:
    probe = "import sys, orchestrator.cli; print(sorted(m for m in ('pydantic', 'psutil', 'rich', 'orchestrator.core') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_socket_served_on_its_own_threads(make_orch, runtime: Path) -> None:
    make_orch(name="svc")
    names = {t.name for t in threading.enumerate()}
    assert "orch-control" in names


def test_submit_follow_shows_progress_and_partials(make_orch, runtime: Path) -> None:
    make_orch(name="svc", handlers=HANDLERS)
    result = CliRunner().invoke(main, ["submit", "partials", "--config", '{"n": 3}', "--follow"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert json.loads(lines[-1])["data"] == 3
    assert "partial 2: {'i': 2}" in result.stderr
