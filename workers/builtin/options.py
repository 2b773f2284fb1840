"""Reading a built-in handler's config: each bad key is a `ValueError` that names it."""

from __future__ import annotations

from typing import Any

_MISSING = object()


def option(config: dict[str, Any], key: str, kinds: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    """``config[key]`` checked against ``kinds`` (bool is never taken for a number).

    Raises:
        ValueError: the key is missing and has no default, or its value has the wrong type.
    """
    if key not in config or config[key] is None:
        if default is _MISSING:
            raise ValueError(f"config key {key!r} is required")
        return default
    value = config[key]
    numeric = kinds in (int, float) or (isinstance(kinds, tuple) and set(kinds) <= {int, float})
    if isinstance(value, kinds) and not (numeric and isinstance(value, bool)):
        return value
    names = kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
    raise ValueError(f"config key {key!r} must be {names}, not {type(value).__name__} ({value!r:.60})")


def positive(config: dict[str, Any], key: str, default: float) -> float:
    """A number > 0 under ``key`` (default when absent)."""
    value = option(config, key, (int, float), default)
    if value <= 0:
        raise ValueError(f"config key {key!r} must be > 0, not {value!r}")
    return float(value)


def count(config: dict[str, Any], key: str, default: int | None) -> int | None:
    """An int >= 1 under ``key`` (default when absent)."""
    value = option(config, key, int, default)
    if value is not None and value < 1:
        raise ValueError(f"config key {key!r} must be >= 1, not {value!r}")
    return value  # type: ignore[no-any-return]


def strings(config: dict[str, Any], key: str) -> list[str] | None:
    """A list of non-empty strings under ``key``, or None when absent."""
    value = option(config, key, list, None)
    if value is not None and not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"config key {key!r} must be a list of non-empty str, not {value!r:.60}")
    return value  # type: ignore[no-any-return]
