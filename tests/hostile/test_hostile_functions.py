"""Executor functions whose values fight back: reducers that exit while pickled or unpickled.

Pickling runs the user's code (``__reduce__``) in the worker and on the host; nothing it raises,
SystemExit included, may end the supervisor, the event thread or the worker's loop.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator import ProcessPoolExecutor, TaskFailedError
from tests.conftest import DEADLOCK_TIMEOUT
from tests.helpers import functions


@pytest.fixture
def executor(no_leaks: None) -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(max_workers=1) as pool:
        yield pool


def test_a_result_that_exits_when_unpickled_fails_its_future_only(executor: ProcessPoolExecutor) -> None:
    first_pid = executor.submit(functions.pid).result(DEADLOCK_TIMEOUT)
    with pytest.raises(TaskFailedError, match="cannot be unpickled here: SystemExit") as caught:
        executor.submit(functions.return_exiting).result(DEADLOCK_TIMEOUT)
    assert caught.value.kind == "serialization"
    assert executor.orchestrator.get_status().state == "running"
    assert executor.submit(functions.pid).result(DEADLOCK_TIMEOUT) == first_pid


def test_an_exception_that_exits_when_unpickled_still_says_what_was_raised(
    executor: ProcessPoolExecutor,
) -> None:
    with pytest.raises(TaskFailedError, match=r"ExitingError: never rebuilt.*SystemExit"):
        executor.submit(functions.raise_exiting).result(DEADLOCK_TIMEOUT)
    assert executor.submit(functions.square, 3).result(DEADLOCK_TIMEOUT) == 9


def test_a_result_that_exits_when_pickled_fails_its_future_and_the_worker_lives(
    executor: ProcessPoolExecutor,
) -> None:
    first_pid = executor.submit(functions.pid).result(DEADLOCK_TIMEOUT)
    with pytest.raises(SystemExit):
        executor.submit(functions.return_unpicklable_exiting).result(DEADLOCK_TIMEOUT)
    assert executor.submit(functions.pid).result(DEADLOCK_TIMEOUT) == first_pid
