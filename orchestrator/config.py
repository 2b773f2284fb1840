"""What users construct: `OrchestratorConfig` for the orchestrator, `TaskSpec` for each task.

Both are pydantic models that reject unknown fields, so a typo is an error, never a silent
default. Validation happens here, at the boundary; nothing past `submit_task` validates again.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import ConfigError, InvalidTaskError, OrchestratorError
from workers import protocol
from workers.builtin import BUILTIN_HANDLERS
from workers.calls import CALL_TYPE
from workers.registry import HANDLER_PATH

_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

StartMethod = Literal["forkserver", "spawn", "fork"]


def describe(exc: ValidationError) -> str:
    """One line per problem: ``field: what is wrong (got value)``."""
    problems = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "spec"
        got = error.get("input")
        shown = repr(got) if not isinstance(got, dict) else "{...}"
        problems.append(f"{where}: {error['msg']} (got {shown[:80]})")
    return "; ".join(problems)


class _Checked(BaseModel):
    """A model whose construction fails with the API's own error, naming each bad field."""

    _error: ClassVar[tuple[type[OrchestratorError], str]]

    def __init__(self, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            error, what = self._error
            raise error(f"invalid {what}: {describe(exc)}") from exc


class OrchestratorConfig(_Checked):
    """How an orchestrator runs: pool size and scaling, queue bound, limits, handlers.

    Raises:
        ConfigError: a field that does not validate (the message names each one).
    """

    _error = (ConfigError, "orchestrator config")

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_workers: int = Field(5, ge=1, strict=True, description="most worker processes at once")
    min_workers: int = Field(0, ge=0, strict=True, description="workers kept alive when idle")
    enable_auto_scaling: bool = Field(
        True, description="spawn on demand and retire idle workers; False: a fixed pool"
    )
    idle_timeout: float = Field(
        300.0, gt=0, strict=True, description="seconds before an idle worker exits (inf: never)"
    )
    task_queue_size: int = Field(100, ge=1, strict=True, description="most tasks waiting to run")
    default_task_timeout: float | None = Field(
        None, gt=0, strict=True, description="timeout of tasks with none (None or inf: none)"
    )
    timeout_grace: float = Field(
        2.0,
        gt=0,
        strict=True,
        description="seconds a stopped handler gets before its worker is killed (inf: never killed)",
    )
    max_memory_mb: float | None = Field(
        None, gt=0, strict=True, allow_inf_nan=False, description="RSS limit of one worker"
    )
    max_cpu_seconds: float | None = Field(
        None, gt=0, strict=True, description="CPU-time limit of one task (None or inf: none)"
    )
    resource_check_interval: float = Field(
        0.5,
        gt=0,
        strict=True,
        allow_inf_nan=False,
        description="seconds between checks of busy workers' memory and CPU time",
    )
    worker_start_timeout: float = Field(
        60.0,
        gt=0,
        strict=True,
        allow_inf_nan=False,
        description="seconds a new worker has to start; one that has not is killed, its tasks requeued",
    )
    max_tasks_per_worker: int | None = Field(
        None, ge=1, strict=True, description="recycle a worker after this many tasks"
    )
    worker_type_limits: dict[str, int] = Field(
        default_factory=dict, description="most running tasks per type"
    )
    shm_threshold: int | None = Field(
        65536, ge=1, strict=True, description="bytes from which a buffer travels in shared memory"
    )
    result_buffers: Literal["bytes", "view"] = Field(
        "bytes",
        description="large buffers in results and partials: copied into bytes/arrays, or handed "
        "out as read-only views of their shared memory, valid as long as they are held",
    )
    prefetch: Literal["auto"] | Annotated[int, Field(ge=0, strict=True)] = Field(
        "auto",
        description='tasks a busy worker holds queued behind its running one: "auto" sizes it by how '
        "long the type's tasks run (about 10 ms of work, 1 to 64 tasks), a number fixes it (0: none)",
    )
    worker_concurrency: dict[str, int] = Field(
        default_factory=dict, description="async tasks one worker of a type runs at once (default 1)"
    )
    handlers: dict[str, str] = Field(
        default_factory=dict, description='extra task types: name -> "module:function"'
    )
    worker_init: dict[str, str] = Field(
        default_factory=dict,
        description='task type (or "*": any) -> "module:function" a worker calls once before its first task',
    )
    trusted_targets: list[str] = Field(
        default_factory=list,
        description="module prefixes and executables that optimize and monitor configs may name",
    )
    research_roots: list[str] | None = Field(
        None, description="folders research tasks may read (absolute, real paths; None: any)"
    )
    research_hosts: list[str] | None = Field(
        None, description="URL hosts (name or name:port) research tasks may fetch from (None: any)"
    )
    start_method: StartMethod = "forkserver"
    enable_logging: bool = Field(False, description="print the library's log records to stderr")
    log_format: Literal["text", "json"] = Field(
        "text", description="with enable_logging: text lines, or one JSON object per line"
    )
    log_tasks: bool = Field(False, description="log each task's lifecycle at INFO (else at DEBUG)")
    worker_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = Field(
        "INFO",
        description="logging records of workers at this level and above reach the host's logger "
        "orchestrator.task (None: workers' records stay in the worker)",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, strict=True, description="serve Prometheus /metrics here (0: any free port)"
    )
    metrics_host: str = Field("127.0.0.1", min_length=1, description="the address /metrics listens on")
    control_socket: bool = Field(True, description="serve a control socket for the orch CLI")
    journal_path: str | None = Field(None, description="SQLite journal: tasks survive a host crash")
    max_results_in_memory: int = Field(
        10_000, ge=1, strict=True, description="newest final results kept in memory"
    )
    result_ttl: float | None = Field(
        None,
        gt=0,
        strict=True,
        description="seconds after which a final result is dropped, memory and journal (None or inf: never)",
    )
    max_pending_messages: int = Field(
        1000, ge=1, strict=True, description="messages a subscription buffers (then the oldest are dropped)"
    )
    max_waiting_tasks: int | None = Field(
        None,
        ge=0,
        strict=True,
        description="tasks blocked in a wait that lend out their slot (None: max_workers; 0: off)",
    )
    backend: Literal["local", "dask"] = Field(
        "local", description="where workers run: local processes, or processes on a Dask cluster"
    )
    dask_address: str | None = Field(
        None, description="a Dask scheduler (tcp://host:8786); None starts a local cluster"
    )
    dask_connect_timeout: float = Field(
        10.0, gt=0, strict=True, allow_inf_nan=False, description="seconds to reach the Dask cluster"
    )
    dask_dashboard: bool = Field(False, description="serve the local cluster's dashboard (127.0.0.1)")
    name: str = "default"

    @field_validator("handlers")
    @classmethod
    def _check_handlers(cls, handlers: dict[str, str]) -> dict[str, str]:
        for task_type, path in handlers.items():
            check_handler(task_type, path)
        return handlers

    @field_validator("worker_init")
    @classmethod
    def _check_worker_init(cls, inits: dict[str, str]) -> dict[str, str]:
        for task_type, path in inits.items():
            if not HANDLER_PATH.match(path):
                raise ValueError(f"worker_init for {task_type!r} is {path!r}; expected 'module:function'")
        return inits

    @field_validator("trusted_targets")
    @classmethod
    def _check_trusted(cls, trusted: list[str]) -> list[str]:
        for entry in trusted:
            if not entry.strip() or entry != entry.strip():
                raise ValueError(
                    f"trusted_targets holds {entry!r}; expected a module prefix or an executable"
                )
        return trusted

    @field_validator("research_roots")
    @classmethod
    def _check_roots(cls, roots: list[str] | None) -> list[str] | None:
        for root in roots or ():
            if not os.path.isabs(root):
                raise ValueError(f"research_roots holds {root!r}; expected an absolute path")
        return roots

    @field_validator("research_hosts")
    @classmethod
    def _check_hosts(cls, hosts: list[str] | None) -> list[str] | None:
        for host in hosts or ():
            if not host or "/" in host or host != host.strip():
                raise ValueError(f"research_hosts holds {host!r}; expected a host name or host:port")
        return hosts

    @field_validator("worker_type_limits", "worker_concurrency")
    @classmethod
    def _check_limits(cls, limits: dict[str, int]) -> dict[str, int]:
        for task_type, cap in limits.items():
            if isinstance(cap, bool) or cap < 1:
                raise ValueError(f"the value for {task_type!r} is {cap!r}; it must be an int >= 1")
        return limits

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(
                f"name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        return name

    @model_validator(mode="after")
    def _check_consistency(self) -> OrchestratorConfig:
        if self.min_workers > self.max_workers:
            raise ValueError(
                f"min_workers ({self.min_workers}) must not exceed max_workers ({self.max_workers})"
            )
        for field in ("worker_type_limits", "worker_concurrency", "worker_init"):
            unknown = sorted(set(getattr(self, field)) - set(self.task_types()) - {"*"})
            if unknown:
                raise ValueError(f"{field} names unknown task types: {', '.join(unknown)}")
        return self

    def task_handlers(self) -> dict[str, str]:
        """Every task type this config knows, built-ins first, mapped to its handler path (the
        reserved ``call`` of an executor's tasks is not among them: see `task_types`)."""
        return {**BUILTIN_HANDLERS, **self.handlers}

    def task_types(self) -> list[str]:
        """Every task type a worker may run here: those with handlers, and ``call``."""
        return [*self.task_handlers(), CALL_TYPE]

    def worker_init_of(self, task_type: str) -> str:
        """The initializer a worker of ``task_type`` calls before its first task ("" for none)."""
        inits = self.worker_init
        return inits.get(task_type) or inits.get("*", "") if inits else ""


def check_handler(task_type: str, path: str) -> None:
    """Raise `ValueError` for a task type name or handler path that cannot be registered."""
    if not isinstance(task_type, str) or not task_type.strip():
        raise ValueError(f"a task type name must be a non-empty str, not {task_type!r}")
    if task_type == CALL_TYPE:
        raise ValueError(
            f"the task type {CALL_TYPE!r} is reserved for executor tasks (functions submitted "
            "through ParallelOrchestrator.executor() or ProcessPoolExecutor); choose another name"
        )
    if not isinstance(path, str) or not HANDLER_PATH.match(path):
        raise ValueError(f"handler for {task_type!r} is {path!r}; expected 'module:function'")


class TaskSpec(_Checked):
    """One task to run: its type, priority (0..10, 10 most urgent), config and limits.

    Raises:
        InvalidTaskError: a field that does not validate (the message names each one).
    """

    _error = (InvalidTaskError, "task spec")

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str = Field(min_length=1)
    description: str = ""
    priority: int = Field(5, ge=0, le=10, strict=True)
    config: dict[str, Any] = Field(default_factory=dict)
    timeout: float | None = Field(None, gt=0, strict=True)
    retries: int = Field(0, ge=0, strict=True)
    retry_on_exception: bool = False
    retry_on: tuple[str, ...] = ()
    retry_backoff: float = Field(1.0, ge=0, strict=True, allow_inf_nan=False)
    retry_backoff_max: float = Field(600.0, ge=0, strict=True, allow_inf_nan=False)
    depends_on: tuple[str, ...] = ()
    depends_on_group: str | None = None
    on_dependency_failure: Literal["fail", "run"] = "fail"
    group: str | None = None
    idempotent: bool = True

    @field_validator("retry_on")
    @classmethod
    def _check_retry_on(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not name.isidentifier():
                raise ValueError(
                    f"retry_on holds {name!r}; expected exception class names like 'ConnectionError'"
                )
        return names

    @field_validator("config")
    @classmethod
    def _check_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        try:
            protocol.check_payload(config)
        except protocol.PayloadError as exc:
            raise ValueError(f"config is {exc}") from exc
        return config


def merged_config(config: OrchestratorConfig | None, overrides: dict[str, Any]) -> OrchestratorConfig:
    """``config`` with ``overrides`` (fields) on top, validated as one config.

    Raises:
        ConfigError: ``config`` is not an `OrchestratorConfig`, or a field does not validate.
    """
    if config is not None and not isinstance(config, OrchestratorConfig):
        raise ConfigError(f"config must be an OrchestratorConfig, not {type(config).__name__}")
    if config is not None and not overrides:
        return config
    fields = config.model_dump(exclude_unset=True) if config is not None else {}
    return OrchestratorConfig(**{**fields, **overrides})
