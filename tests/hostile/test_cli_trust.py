"""The orch command trusts only a runtime dir of its user's own, and only sockets its user serves:
a request may carry a task's config, secrets included."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.wire import SOCKET_SUFFIX
from tests.helpers.control import own_runtime_dir

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user"),
]
NOBODY = 65534


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return own_runtime_dir(tmp_path, monkeypatch)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_a_runtime_dir_of_another_user(runtime: Path) -> None:
    os.chown(runtime, NOBODY, NOBODY)
    code, output = run("status")
    assert code == 2
    assert f"belongs to uid {NOBODY}" in output
    code, output = run("submit", "echo", "--config", '{"api_key": "secret"}')
    assert code == 2
    assert f"belongs to uid {NOBODY}" in output


def test_a_runtime_dir_others_can_write(runtime: Path) -> None:
    os.chmod(runtime, 0o777)
    code, output = run("status")
    assert code == 2
    assert "mode 0777" in output


def test_a_runtime_dir_that_is_a_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "run-link"
    link.symlink_to(target)
    monkeypatch.setenv("ORCH_RUNTIME_DIR", str(link))
    code, output = run("status")
    assert code == 2
    assert "not a directory" in output


@pytest.fixture
def impostor(runtime: Path) -> Iterator[int]:
    """A socket in our own runtime dir, served by another user; yields a pipe it reports frames on."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(runtime / f"svc{SOCKET_SUFFIX}"))
    os.chmod(runtime / f"svc{SOCKET_SUFFIX}", 0o666)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the impostor: the peer credentials of a socket are its listener's
        os.close(read_end)
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        server.listen(8)
        while True:
            connection, _ = server.accept()
            data = connection.recv(65536)
            if data:
                os.write(write_end, b"got %d bytes\n" % len(data))
            connection.close()
    server.close()
    os.close(write_end)
    yield read_end
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read_end)


def test_a_socket_served_by_another_user_gets_nothing(impostor: int) -> None:
    code, output = run("submit", "echo", "--name", "svc", "--config", '{"api_key": "secret"}')
    assert code == 2
    assert f"served by uid {NOBODY}" in output
    code, output = run("status")
    assert code == 2
    assert f"served by uid {NOBODY}" in output
    os.set_blocking(impostor, False)
    with pytest.raises(BlockingIOError):
        os.read(impostor, 4096)  # nothing with a byte in it ever reached the impostor
