"""What a task's config may make a built-in handler do: only what the host trusts.

``optimize`` calls any ``"module:function"`` and runs any command line, and ``monitor`` runs any
command line, as its config says; a config is data (often written by a model, or sent over the
control socket), so it must not be code. `OrchestratorConfig.trusted_targets` lists what may be
named: module prefixes (``"mypkg"`` allows ``mypkg`` and ``mypkg.sub``) and executables (matched
exactly against a command's first word, a name or a path). ``research`` reads what its config
names; `OrchestratorConfig.research_roots` and ``research_hosts``, when set, become the
``allowed_roots`` and ``allowed_hosts`` of every research task (a config may narrow them, never
widen them), and the worker enforces them on each file it opens and each redirect it follows.
Checked at dispatch, after plan references are substituted, so a value a dependency returned is
checked too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, Final

from orchestrator.config import OrchestratorConfig
from workers.builtin import BUILTIN_HANDLERS

_SETTING: Final = "OrchestratorConfig.trusted_targets"


class Refused(Exception):
    """A task's config reaches past what the host trusts; the message names the key and the setting."""


def vetted_config(
    handler: str, config: dict[str, Any], settings: OrchestratorConfig
) -> dict[str, Any] | None:
    """The config the task runs with when the host's limits add to it, else None (run it as is).

    Raises:
        Refused: the config names a target, folder or host the host's settings do not allow.
    """
    named = _TARGETS.get(handler)
    for key, kind, target in named(config) if named else ():
        if not _allowed(kind, target, settings.trusted_targets):
            raise Refused(
                f"config key {key!r} names the {kind} {target!r}, which is not in {_SETTING} "
                f"(trusted: {settings.trusted_targets or 'nothing'}); add it there to allow it"
            )
    if handler == BUILTIN_HANDLERS["research"]:
        return _research_scope(config, settings)
    return None


def _research_scope(config: dict[str, Any], settings: OrchestratorConfig) -> dict[str, Any] | None:
    scoped: dict[str, Any] | None = None
    limits = (
        ("allowed_roots", "research_roots", settings.research_roots, _under_root),
        ("allowed_hosts", "research_hosts", settings.research_hosts, _on_host),
    )
    for key, setting, limit, within in limits:
        if limit is None:
            continue
        given = config.get(key)
        if given is None:
            scoped = {**(scoped or config), key: list(limit)}
            continue
        # A value of the wrong shape is the handler's to refuse, with its own message.
        for entry in given if isinstance(given, list) else ():
            if isinstance(entry, str) and not within(entry, limit):
                raise Refused(
                    f"config key {key!r} holds {entry!r}, which is not within "
                    f"OrchestratorConfig.{setting} {limit}; a config may narrow that setting, not widen it"
                )
    return scoped


def _under_root(path: str, roots: list[str]) -> bool:
    # Lexical: the worker refuses a root that goes through a symlink, so the real folder is this one.
    normal = os.path.normpath(path)
    return os.path.isabs(path) and any(
        normal == (root := os.path.normpath(limit)) or normal.startswith(root.rstrip("/") + "/")
        for limit in roots
    )


def _on_host(host: str, hosts: list[str]) -> bool:
    allowed = {entry.lower().rstrip(".") for entry in hosts}
    name = host.lower().rstrip(".")
    return name in allowed or name.rpartition(":")[0] in allowed


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
