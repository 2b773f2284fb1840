"""The pytest plugin the package ships, used as a user's project uses it (pytester)."""

from __future__ import annotations

import _posixshmem

import pytest

pytest_plugins = ["pytester"]

USERS_TESTS = """
import os

import _posixshmem

from workers.shm import block_prefix


def test_an_orchestrator_to_use(orch):
    task_id = orch.submit_task({"type": "analyze", "config": {"data": [1, 2, 3]}})
    assert orch.wait(task_id, timeout=30).data["rows"] == 3
    assert (orch.config.max_workers, orch.config.control_socket) == (2, False)


def test_as_many_as_wanted(orch_factory):
    first, second = orch_factory(), orch_factory(max_workers=1)
    assert first.config.name != second.config.name
    for made in (first, second):
        assert made.wait(made.submit_task({"type": "analyze", "config": {"data": [1]}}), timeout=30).success


def test_that_leaves_a_block_behind(orch):
    orch.submit_task({"type": "analyze", "config": {"data": [1]}})
    orch.shutdown()
    name = block_prefix(orch._block_namespace) + "leaked"
    os.close(_posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
    with open(os.environ["LEAKED_BLOCK_FILE"], "w") as record:
        record.write(name)
"""


def test_the_fixtures_work_in_a_users_project_and_catch_a_leak(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = pytester.path / "leaked-block"
    monkeypatch.setenv("LEAKED_BLOCK_FILE", str(record))
    pytester.makepyfile(test_users=USERS_TESTS)
    try:
        outcome = pytester.runpytest("-p", "no:cacheprovider")
    finally:
        if record.exists():
            _posixshmem.shm_unlink("/" + record.read_text())
    outcome.assert_outcomes(passed=3, errors=1)
    assert record.exists()
    outcome.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_that_leaves_a_block_behind*",
            f"*block /dev/shm/{record.read_text()} left behind*",
        ]
    )
