"""Objective functions with a known optimum, for the optimize type."""

from __future__ import annotations


def bowl(x: float, y: float) -> float:
    """Minimum 0 at x=3, y=-1."""
    return (x - 3) ** 2 + (y + 1) ** 2


def pick(n: int, mode: str) -> float:
    """Maximum 10 at n=7 with mode 'b'."""
    return 10 - abs(n - 7) - (0 if mode == "b" else 5)
