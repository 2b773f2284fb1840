"""Task type -> handler, addressed as ``"module:function"``; resolved inside the worker only."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any, Final

HANDLER_PATH: Final = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def resolve_handler(path: str) -> Callable[..., Any]:
    """Import ``module`` and return its ``function`` (dotted attribute paths allowed).

    Raises:
        ValueError: the path is not of the form ``"module:function"``.
        ImportError: the module does not import.
        AttributeError: the module has no such function.
        TypeError: the attribute is not callable.
    """
    if not HANDLER_PATH.match(path):
        raise ValueError(f"handler {path!r} is not of the form 'module:function'")
    module_name, _, attribute = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise AttributeError(
                f"handler {path!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from exc
    if not callable(target):
        raise TypeError(f"handler {path!r} is not callable (it is a {type(target).__name__})")
    return target  # type: ignore[no-any-return]
