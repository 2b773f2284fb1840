"""The control socket under stress: a symlinked or cluttered runtime dir, running out of file
descriptors, too many clients, a client that dribbles, and a server that takes no connection."""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import OrchestratorError, ParallelOrchestrator, control
from orchestrator.cli import client, main
from orchestrator.wire import SOCKET_SUFFIX, recv_frame, send_frame
from tests.conftest import DEADLOCK_TIMEOUT
from tests.helpers.control import connect, own_runtime_dir

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return own_runtime_dir(tmp_path, monkeypatch)


def ask(sock: socket.socket, request: dict[str, object]) -> dict[str, object]:
    send_frame(sock, request)
    reply = recv_frame(sock)
    assert reply is not None
    return reply


def test_a_symlinked_runtime_dir_is_refused_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    (target / "keep.sock").write_text("a regular file")
    link = tmp_path / "run"
    link.symlink_to(target)
    monkeypatch.setenv("ORCH_RUNTIME_DIR", str(link))
    with pytest.raises(OrchestratorError, match=r"not a directory \(a symlink\?\)"):
        ParallelOrchestrator(name="keep").initialize()
    assert (target.stat().st_mode & 0o777) == 0o755
    assert (target / "keep.sock").read_text() == "a regular file"


def test_only_stale_sockets_of_ours_are_removed(runtime: Path) -> None:
    clutter = runtime / f"svc{SOCKET_SUFFIX}"
    clutter.write_text("not a socket")
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1
    assert clutter.exists(), "orch status removed a file that is not a socket"
    with pytest.raises(OrchestratorError, match="in the way"):
        ParallelOrchestrator(name="svc").initialize()
    assert clutter.read_text() == "not a socket"


def test_too_many_clients_get_a_busy_frame(
    make_orch: Callable[..., ParallelOrchestrator], runtime: Path
) -> None:
    make_orch(max_workers=1, control_socket=True, name="crowded")
    path = runtime / f"crowded{SOCKET_SUFFIX}"
    held = []
    try:
        for _ in range(control.MAX_CONNECTIONS):
            sock = connect(path)
            held.append(sock)
            assert ask(sock, {"op": "status"})["ok"]  # served, so counted, before the next one
        with connect(path) as extra:
            reply = recv_frame(extra)
        assert reply == {"ok": False, "error": f"busy: {control.MAX_CONNECTIONS} connections open"}
        assert ask(held[0], {"op": "status"})["ok"], "the open connections are still served"
    finally:
        for sock in held:
            sock.close()


def test_the_idle_limit_covers_a_whole_request(
    make_orch: Callable[..., ParallelOrchestrator], runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client sending a byte now and then used to hold its thread for ever."""
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.5)
    make_orch(max_workers=1, control_socket=True, name="dribble")
    with connect(runtime / f"dribble{SOCKET_SUFFIX}") as sock:
        sock.send(struct.pack(">I", 100))  # a request of 100 bytes, then its body a byte at a time
        for _ in range(40):  # 40 bytes, 0.1 s apart: 4 s, eight times the limit
            sock.send(b"\x00")
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                break
        else:
            pytest.fail("the server kept a dribbling connection open")
        assert sock.recv(65536) == b"", "the server closed the connection"


@pytest.fixture
def stopped_server(runtime: Path) -> Iterator[Path]:
    """A socket that takes no connection: listening with a full backlog, as a stopped host's is."""
    path = runtime / f"stopped{SOCKET_SUFFIX}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(0)
    queued = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    queued.connect(str(path))  # fills the backlog of one
    yield path
    queued.close()
    server.close()


def test_a_server_that_takes_no_connection_is_busy_not_stale(
    stopped_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "CONNECT_TIMEOUT", 0.3)
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 2
    assert "busy" in result.output
    assert stopped_server.exists(), "a busy socket is not stale and is not removed"
    result = CliRunner().invoke(main, ["submit", "echo", "--name", "stopped"])
    assert result.exit_code == 2
    assert "is busy" in result.output


EMFILE_HOST = """
import os, resource, sys
sys.path.insert(0, {root!r})
from orchestrator import ParallelOrchestrator

if __name__ == "__main__":
    orch = ParallelOrchestrator(max_workers=1, name="starved")
    orch.initialize()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 1, hard))
    hoard = []
    try:
        while True:
            hoard.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    print("starved", flush=True)
    sys.stdin.readline()
    for fd in hoard:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print("fed", flush=True)
    sys.stdin.readline()
    orch.shutdown()
"""


def test_running_out_of_file_descriptors_pauses_serving_only(tmp_path: Path, runtime: Path) -> None:
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(EMFILE_HOST.format(root=str(ROOT))))
    with subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as host:
        try:
            feed_a_starved_host(host, runtime)
        finally:
            host.kill()


def feed_a_starved_host(host: subprocess.Popen[str], runtime: Path) -> None:
    """A request queued while the host has no file descriptor left is answered once it has."""
    assert host.stdout is not None
    assert host.stdin is not None
    assert host.stdout.readline().strip() == "starved"
    with connect(runtime / f"starved{SOCKET_SUFFIX}") as sock:  # queued: it cannot be accepted yet
        send_frame(sock, {"op": "status"})
        host.stdin.write("\n")
        host.stdin.flush()
        assert host.stdout.readline().strip() == "fed"
        reply = recv_frame(sock)
    assert reply is not None
    assert reply["ok"], reply
    host.stdin.write("\n")
    host.stdin.flush()
    assert host.wait(DEADLOCK_TIMEOUT) == 0


STOPPABLE_HOST = """
import sys
sys.path.insert(0, {root!r})
from orchestrator import ParallelOrchestrator

if __name__ == "__main__":
    orch = ParallelOrchestrator(max_workers=1, name="frozen")
    orch.initialize()
    print("ready", flush=True)
    sys.stdin.readline()
    orch.shutdown()
"""


def test_a_sigstopped_host_is_busy_and_answers_again_after_sigcont(
    tmp_path: Path, runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-Z on a host: its socket takes connections into the backlog but nothing answers them."""
    monkeypatch.setattr(client, "CONNECT_TIMEOUT", 0.5)
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(STOPPABLE_HOST.format(root=str(ROOT))))
    with subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as host:
        assert host.stdout is not None
        assert host.stdin is not None
        try:
            assert host.stdout.readline().strip() == "ready"
            os.kill(host.pid, signal.SIGSTOP)
            for command in (
                ["status"],
                ["status", "--name", "frozen"],
                ["submit", "echo", "--name", "frozen"],
            ):
                result = CliRunner().invoke(main, command)
                assert result.exit_code == 2, (command, result.output)
                assert "busy" in result.output, (command, result.output)
            assert (runtime / f"frozen{SOCKET_SUFFIX}").exists(), "a stopped host's socket is not stale"
            os.kill(host.pid, signal.SIGCONT)
            result = CliRunner().invoke(main, ["status", "--name", "frozen"])
            assert result.exit_code == 0, result.output
            host.stdin.write("\n")
            host.stdin.flush()
            assert host.wait(DEADLOCK_TIMEOUT) == 0
        finally:
            if host.poll() is None:
                os.kill(host.pid, signal.SIGCONT)
                host.kill()
