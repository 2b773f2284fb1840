"""Talking to a control socket from a test, as a client in another language would."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import DEADLOCK_TIMEOUT


def connect(path: Path) -> socket.socket:
    """A connection to the control socket at ``path`` (every wait bounded by the deadlock timeout)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(DEADLOCK_TIMEOUT)
    sock.connect(str(path))
    return sock


def own_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runtime dir of the test's own, 0700 as the CLI requires, used through ORCH_RUNTIME_DIR."""
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("ORCH_RUNTIME_DIR", str(directory))
    return directory
