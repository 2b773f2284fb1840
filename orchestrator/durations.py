"""Durations at the edges: what a caller's timeout means, and how long one wait may block.

Every duration the orchestrator takes is finite or means "never" explicitly (``None``, or ``inf``
where the field says so); none reaches a system call unclamped. epoll and poll take their timeout
as a C int of milliseconds, so a wait of 2**31 ms (24.8 days) or more raises `OverflowError`;
``threading`` locks refuse more than `threading.TIMEOUT_MAX`. A longer wait is a loop of shorter ones.
"""

from __future__ import annotations

import math
import threading
from typing import Final

# The longest single blocking wait: far below every system call's limit, and a wake-up a day to
# re-read the clock costs nothing.
MAX_BLOCKING_WAIT: Final = 86_400.0


def clamp_wait(seconds: float | None) -> float | None:
    """``seconds`` (None: until woken) cut to `MAX_BLOCKING_WAIT`, for one blocking call."""
    return MAX_BLOCKING_WAIT if seconds is None or seconds > MAX_BLOCKING_WAIT else seconds


def caller_timeout(timeout: float | None, name: str = "timeout") -> float | None:
    """A caller's timeout as the blocking helpers take it: None waits for ever (so does ``inf``, or
    any wait longer than a lock can time: `threading.TIMEOUT_MAX`, some 290 years); a negative one
    is 0 (look once).

    Raises:
        TypeError: ``timeout`` is not a number.
        ValueError: ``timeout`` is NaN.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(timeout).__name__}")
    if math.isnan(timeout):
        raise ValueError(f"{name} must be a number of seconds or None, not nan")
    if timeout >= threading.TIMEOUT_MAX:
        return None
    return max(0.0, float(timeout))
