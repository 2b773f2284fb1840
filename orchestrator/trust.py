"""What a task's config may make a built-in handler run: only targets the host trusts.

``optimize`` calls any ``"module:function"`` and runs any command line, and ``monitor`` runs any
command line, as its config says; a config is data (often written by a model, or sent over the
control socket), so it must not be code. `OrchestratorConfig.trusted_targets` lists what may be
named: module prefixes (``"mypkg"`` allows ``mypkg`` and ``mypkg.sub``) and executables (matched
exactly against a command's first word, a name or a path). A task naming anything else fails at
dispatch, after plan references are substituted, so a value a dependency returned is checked too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from workers.registry import BUILTIN_HANDLERS

_SETTING: Final = "OrchestratorConfig.trusted_targets"


def untrusted_target(handler: str, config: dict[str, Any], trusted: list[str]) -> str | None:
    """Why the task may not run (naming the config key and the setting), or None when it may."""
    named = _TARGETS.get(handler)
    if named is None:
        return None
    for key, kind, target in named(config):
        if not _allowed(kind, target, trusted):
            return (
                f"config key {key!r} names the {kind} {target!r}, which is not in {_SETTING} "
                f"(trusted: {trusted or 'nothing'}); add it there to allow it"
            )
    return None


def _allowed(kind: str, target: str, trusted: list[str]) -> bool:
    if kind == "module":
        return any(target == prefix or target.startswith(prefix + ".") for prefix in trusted)
    return target in trusted


def _optimize_targets(config: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    target = config.get("target")
    if isinstance(target, str):
        yield "target", "module", target.partition(":")[0]
    elif isinstance(target, dict):
        yield from _command("target", target.get("command"))


def _monitor_targets(config: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    targets = config.get("targets")
    for target in targets if isinstance(targets, list) else []:
        if isinstance(target, dict) and target.get("kind") == "command":
            yield from _command("targets", target.get("argv"))


def _command(key: str, argv: Any) -> Iterator[tuple[str, str, str]]:
    # A malformed command is the handler's to refuse, with its own message.
    if isinstance(argv, list) and argv and isinstance(argv[0], str):
        yield key, "executable", argv[0]


_TARGETS: Final[dict[str, Callable[[dict[str, Any]], Iterator[tuple[str, str, str]]]]] = {
    BUILTIN_HANDLERS["optimize"]: _optimize_targets,
    BUILTIN_HANDLERS["monitor"]: _monitor_targets,
}
