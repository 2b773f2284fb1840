"""The Dask backend: the supervisor's worker pool, with its processes on a Dask cluster's nodes.

Dask places and keeps our processes, never our tasks: a `workers.node_plugin.NodePlugin` on each Dask
worker runs one of our worker processes per Dask thread, and each connects back here over an
authenticated connection (`multiprocessing.connection`). The supervisor then drives them exactly
like local workers, so priority stays exact (the supervisor picks every task; Dask holds no queue
of ours), and timeouts, cancellation, retries, crash handling, progress and partial results work
the same. A node's task types are its Dask resources; a local cluster offers every type.

``distributed`` is an optional dependency, imported only here and on the nodes.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import secrets
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any, Final

import msgpack

from orchestrator.backends.base import WorkerHandle
from orchestrator.config import OrchestratorConfig
from orchestrator.errors import OrchestratorError
from orchestrator.limits import kill_process_tree

logger = logging.getLogger(__name__)

EXTRA_HELP: Final = "backend='dask' needs the distributed package: pip install 'parallel-orchestrator[dask]'"
_LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")
NODES_TTL: Final = 1.0
# A node process has this long from its connect to its hello, authentication included.
HANDSHAKE_TIMEOUT: Final = 10.0
_MAX_HELLO: Final = 1 << 16
_TIMEVAL: Final = struct.Struct("ll")
# Waits between accepts that failed for want of resources (EMFILE and the like).
_ACCEPT_BACKOFF: Final = 0.05
_ACCEPT_BACKOFF_MAX: Final = 1.0
_RESOURCE_ERRORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def import_distributed() -> Any:
    """The ``distributed`` module, or an `OrchestratorError` naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise OrchestratorError(EXTRA_HELP) from None
    return distributed


def _limit_waits(sock: socket.socket, seconds: float | None) -> None:
    """Bound every blocking read and write of ``sock`` (None: unbounded), also through
    ``multiprocessing.connection``, which reads the descriptor directly."""
    whole = int(seconds or 0)
    limit = _TIMEVAL.pack(whole, int(((seconds or 0) - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)


def _hello(frame: bytes) -> tuple[str, int, int, dict[str, float]]:
    """A node process's first message: its Dask worker's address, slot, pid and resources."""
    node, index, pid, resources = msgpack.unpackb(frame, raw=False)
    if not (
        type(node) is str
        and type(index) is int
        and type(pid) is int
        and pid > 0
        and isinstance(resources, dict)
        and all(type(k) is str and type(v) in (int, float) for k, v in resources.items())
    ):
        raise ValueError("a malformed hello")
    return node, index, pid, {name: float(amount) for name, amount in resources.items()}


@dataclass
class _Arrival:
    """A process that connected from a node and waits to be taken into the pool."""

    conn: Connection
    node: str
    index: int
    pid: int
    resources: dict[str, float]


class _RemoteProcess:
    """What the supervisor needs of a process it did not start: a pid and a death sentinel.

    The sentinel is a pipe that becomes readable when the connection to the process is lost,
    which is how a node process's death shows on the host.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exitcode: int | None = None
        self.sentinel, self._alive = os.pipe()

    def mark_dead(self) -> None:
        if self._alive >= 0:
            os.close(self._alive)
            self._alive = -1

    def join(self, timeout: float | None = None) -> None:
        """Nothing to wait for: the process belongs to its node."""

    def close(self) -> None:
        self.mark_dead()
        with contextlib.suppress(OSError):
            os.close(self.sentinel)


class DaskPool:
    """Worker processes on a Dask cluster (local or remote), connected back to this host."""

    def __init__(self, config: OrchestratorConfig, types: list[str], block_namespace: str) -> None:
        distributed = import_distributed()
        self._config = config
        self._types = types
        self._block_namespace = block_namespace
        self._cluster: Any = None
        self._client: Any = None
        self._arrivals: collections.deque[_Arrival] = collections.deque()
        self._arrived = threading.Condition()
        self._closing = False
        self.on_arrival: Callable[[], None] | None = None
        # Our processes in the pool by node, and each node's resources (task type -> amount).
        self._on_node: dict[str, list[WorkerHandle]] = {}
        self._resources: dict[str, dict[str, float]] = {}
        self._nodes: dict[str, tuple[int, dict[str, float]]] = {}
        self._nodes_at = -NODES_TTL
        # Processes asked of each node and not yet connected: when each was asked.
        self._requested: dict[str, list[float]] = {}
        self._plugin_name = f"parallel-orchestrator-{block_namespace}"
        try:
            self._client = self._connect(distributed)
            self._authkey = secrets.token_bytes(32)
            self._listener = socket.create_server((self._callback_host(), 0), backlog=128)
            self._acceptor = threading.Thread(target=self._accept_loop, name="orch-dask-accept", daemon=True)
            self._acceptor.start()

            from workers.node_plugin import NodePlugin, start_processes

            self._start_processes = start_processes
            host, port = self._listener.getsockname()[:2]
            plugin = NodePlugin(host, port, self._authkey, config.timeout_grace)
            self._client.register_plugin(plugin, name=self._plugin_name)
            self._await_processes()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- start-up

    def _connect(self, distributed: Any) -> Any:
        """A client of the configured cluster (started here when it is a local one)."""
        config = self._config
        timeout = config.dask_connect_timeout
        if config.dask_address is None:
            self._cluster = distributed.LocalCluster(
                n_workers=config.max_workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                scheduler_port=0,
                # The scheduler serves HTTP (health, metrics) even without a dashboard: on
                # 127.0.0.1 and a port of the OS's choosing, never Dask's default 8787.
                dashboard_address="127.0.0.1:0",
                scheduler_kwargs={"dashboard": config.dask_dashboard},
                worker_dashboard_address=None,
                resources=dict.fromkeys(self._types, 1),
                silence_logs=logging.ERROR,
            )
            return distributed.Client(self._cluster, timeout=timeout)
        client = None
        try:
            client = distributed.Client(config.dask_address, timeout=timeout)
            client.wait_for_workers(1, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            if client is not None:
                client.close()
            raise OrchestratorError(
                f"cannot use the Dask cluster at {config.dask_address}: {exc or type(exc).__name__} "
                f"(dask_connect_timeout={timeout:g} s; is the scheduler up, with at least one worker?)"
            ) from None
        return client

    def _request_process(self, task_type: str | None) -> None:
        """Ask a node with a thread to spare, and offering the type, for one more process."""
        now = time.monotonic()
        for node, (threads, resources) in self._nodes_now().items():
            if task_type is not None and resources.get(task_type, 0.0) <= 0:
                continue
            # A request unanswered after the connect timeout is forgotten (its node may be gone).
            timeout = self._config.dask_connect_timeout
            pending = [t for t in self._requested.get(node, []) if now - t < timeout]
            present = len(self._on_node.get(node, [])) + sum(a.node == node for a in self._arrivals)
            if present + len(pending) < threads:
                self._requested[node] = [*pending, now]
                self._client.run(self._start_processes, self._plugin_name, 1, workers=[node], wait=False)
                return

    def _callback_host(self) -> str:
        """The address our node processes connect back to: the one that reaches the scheduler."""
        scheduler = self._client.scheduler.address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
        if scheduler in _LOOPBACK:
            return "127.0.0.1"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((scheduler, 9))
            return str(probe.getsockname()[0])

    def _await_processes(self) -> None:
        """Wait until every thread of the cluster has its process connected (or the timeout)."""
        wanted = self.capacity()
        deadline = time.monotonic() + self._config.dask_connect_timeout
        with self._arrived:
            while len(self._arrivals) < wanted:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrived.wait(left)
            if not self._arrivals:
                raise OrchestratorError(
                    f"no worker process connected back from the Dask cluster within "
                    f"{self._config.dask_connect_timeout:g} s; the nodes must reach this host at "
                    f"{self._listener.getsockname()[0]} and import parallel-orchestrator"
                )

    def _accept_loop(self) -> None:
        """Take connections until `close`; each is authenticated on a thread of its own, so a client
        that sends nothing, or the wrong key, holds up nobody."""
        backoff = _ACCEPT_BACKOFF
        while not self._closing:
            try:
                sock, _ = self._listener.accept()
            except OSError as exc:
                if self._closing:
                    return
                if exc.errno in _RESOURCE_ERRORS:
                    logger.warning(
                        "the Dask callback listener cannot accept (%s); again in %.2f s", exc, backoff
                    )
                    time.sleep(backoff)
                    backoff = min(2 * backoff, _ACCEPT_BACKOFF_MAX)
                continue
            backoff = _ACCEPT_BACKOFF
            threading.Thread(target=self._admit, args=(sock,), name="orch-dask-admit", daemon=True).start()

    def _admit(self, sock: socket.socket) -> None:
        """Authenticate one node process within `HANDSHAKE_TIMEOUT` and queue it as an arrival."""
        address = sock.getpeername()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # replies are small: no Nagle
            _limit_waits(sock, HANDSHAKE_TIMEOUT)
            conn = Connection(sock.detach())
        except OSError as exc:
            sock.close()
            logger.warning("a connection from %s to the Dask callback listener failed: %s", address, exc)
            return
        try:
            deliver_challenge(conn, self._authkey)
            answer_challenge(conn, self._authkey)
            arrival = _Arrival(conn, *_hello(conn.recv_bytes(_MAX_HELLO)))
            with socket.socket(fileno=os.dup(conn.fileno())) as own:
                _limit_waits(own, None)  # from here the supervisor owns its timing
        except Exception as exc:  # noqa: BLE001 - a stranger, a wrong key, garbage or silence: refused
            conn.close()
            logger.warning("refused a connection from %s to the Dask callback listener: %r", address, exc)
            return
        with self._arrived:
            if self._closing:
                conn.close()
                return
            self._arrivals.append(arrival)
            if self._requested.get(arrival.node):
                self._requested[arrival.node].pop(0)
            self._arrived.notify_all()
        if self.on_arrival is not None:
            self.on_arrival()

    # ----------------------------------------------------------------- the pool interface

    def capacity(self) -> int:
        """Threads in the cluster now: the most tasks that run at once."""
        return sum(threads for threads, _ in self._nodes_now().values())

    def offered_types(self) -> set[str]:
        """The task types some node offers now (a local cluster offers every type)."""
        if self._config.dask_address is None:
            return set(self._types)
        nodes = self._nodes_now().values()
        return {name for _, resources in nodes for name, amount in resources.items() if amount > 0}

    def _nodes_now(self) -> dict[str, tuple[int, dict[str, float]]]:
        """Each Dask worker's threads and resources, read from the scheduler at most once a second
        (submit_task asks on every call)."""
        now = time.monotonic()
        if now - self._nodes_at > NODES_TTL:
            workers = self._client.scheduler_info(n_workers=-1)["workers"]
            self._nodes = {
                address: (int(info["nthreads"]), dict(info.get("resources", {})))
                for address, info in workers.items()
            }
            self._nodes_at = now
        return self._nodes

    def spawn(
        self, worker_id: int, task_type: str | None = None, waiting: bool = True
    ) -> WorkerHandle | None:
        """Take a connected process from a node that offers ``task_type``.

        None when none is free; a node with a thread to spare is then asked to start one, and the
        supervisor is woken when it connects.
        """
        with self._arrived:
            for arrival in list(self._arrivals):
                if task_type is not None and arrival.resources.get(task_type, 0.0) <= 0:
                    continue
                self._arrivals.remove(arrival)
                break
            else:
                if waiting:
                    self._request_process(task_type)
                return None
        try:
            welcome = [worker_id, self._block_namespace, self._config.worker_log_level]
            arrival.conn.send_bytes(msgpack.packb(welcome))
        except OSError:
            arrival.conn.close()
            return None
        local = arrival.node.split("://")[-1].rsplit(":", 1)[0].strip("[]") in _LOOPBACK
        handle = WorkerHandle(worker_id, _RemoteProcess(arrival.pid), arrival.conn)  # type: ignore[arg-type]
        handle.node = arrival.node
        handle.label = f"{arrival.node}/{arrival.index}"
        handle.local = local
        handle.offers = frozenset(name for name, amount in arrival.resources.items() if amount > 0)
        self._resources[arrival.node] = arrival.resources
        self._on_node.setdefault(arrival.node, []).append(handle)
        return handle

    def may_run(self, worker: WorkerHandle, task_type: str) -> bool:
        """Whether the worker's node offers ``task_type`` and has a unit of it free.

        A node's resource amount caps the tasks of that type running there at once.
        """
        node = worker.node
        if worker.offers is None or node is None:
            return True
        if task_type not in worker.offers:
            return False
        amount = self._resources.get(node, {}).get(task_type, 0.0)
        running = sum(len(h.tasks) for h in self._on_node.get(node, []) if h.type == task_type)
        return running < amount

    @staticmethod
    def kill(worker: WorkerHandle, sig: signal.Signals = signal.SIGKILL) -> None:
        """Stop a node process: by its pid when it runs on this machine, else by hanging up
        (a node process exits as soon as it sees its host gone)."""
        if worker.local:
            kill_process_tree(worker.pid, sig)
        elif sig == signal.SIGKILL:
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(worker.conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def connection_lost(worker: WorkerHandle) -> None:
        """The connection to a node process ended: the process is gone."""
        worker.process.mark_dead()  # type: ignore[attr-defined]

    def forget(self, worker: WorkerHandle) -> None:
        """Free what the host holds for a reaped process."""
        handles = self._on_node.get(worker.node or "", [])
        if worker in handles:
            handles.remove(worker)
        worker.conn.close()
        worker.process.close()

    def nodes(self) -> list[dict[str, Any]]:
        """The Dask workers: address, threads, resources, and our tasks running there."""
        workers = self._client.scheduler_info(n_workers=-1)["workers"]
        return [
            {
                "address": address,
                "threads": int(info["nthreads"]),
                "resources": info.get("resources", {}),
                "running": sum(len(h.tasks) for h in self._on_node.get(address, [])),
            }
            for address, info in sorted(workers.items())
        ]

    @property
    def block_namespace(self) -> str:
        """The orchestrator's part of the names of its shared-memory blocks (none on Dask)."""
        return self._block_namespace

    def close(self, wait: bool = True) -> None:
        """Remove the plugin (its node processes stop), then close the client and a local cluster."""
        self._closing = True
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.unregister_worker_plugin(self._plugin_name)
        listener = getattr(self, "_listener", None)
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop; closing alone does not
            listener.close()
        with self._arrived:
            for arrival in self._arrivals:
                arrival.conn.close()
            self._arrivals.clear()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()
