"""A bound, not a pool: the least host-side work any pool can do per task, for `host_impact`.

`IdealHost` runs no-ops with the dispatch in a process of its own (the design in which a
supervisor leaves the host) and a host that does nothing per task but write its id to that
process and take it back on one reader thread. What it reaches beside a busy host thread is the
most any pool whose caller blocks in ``wait`` can reach there: each wake-up of a blocked thread
waits for the GIL a switch interval, however little Python runs around it.
"""

from __future__ import annotations

import multiprocessing
import os
import selectors
import threading
from typing import Any

import msgpack

from benchmarks.contenders import Contender

_READ = 1 << 16


def _worker(tasks: int, results: int) -> None:
    """Return every task id it reads (the tasks are no-ops)."""
    while data := os.read(tasks, _READ):
        os.write(results, data)


def _dispatcher(from_host: int, to_host: int, workers: int, host_ends: tuple[int, int]) -> None:
    """Deal the host's task ids round-robin to the workers; pass their results back as they come."""
    for end in host_ends:  # inherited: the host's closing its end must read here as EOF
        os.close(end)
    context = multiprocessing.get_context("fork")
    to_workers = []
    selector = selectors.DefaultSelector()
    selector.register(from_host, selectors.EVENT_READ)
    for _ in range(workers):
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        context.Process(target=_worker, args=(task_r, result_w), daemon=True).start()
        os.close(task_r)
        os.close(result_w)
        to_workers.append(task_w)
        selector.register(result_r, selectors.EVENT_READ)
    ids = msgpack.Unpacker()
    turn = 0
    while True:
        for key, _ in selector.select():
            data = os.read(key.fd, _READ)
            if key.fd != from_host:
                os.write(to_host, data)
                continue
            if not data:
                return
            ids.feed(data)
            dealt: list[list[bytes]] = [[] for _ in to_workers]
            for task_id in ids:
                dealt[turn % workers].append(msgpack.packb(task_id))
                turn += 1
            for pipe, batch in zip(to_workers, dealt, strict=True):
                if batch:
                    os.write(pipe, b"".join(batch))


class IdealHost(Contender):
    name = "ideal host (a bound)"

    def start(self) -> None:
        to_dispatcher_r, self._to_dispatcher = os.pipe()
        self._from_dispatcher, from_dispatcher_w = os.pipe()
        host_ends = (self._to_dispatcher, self._from_dispatcher)
        self._process = multiprocessing.get_context("fork").Process(
            target=_dispatcher, args=(to_dispatcher_r, from_dispatcher_w, self.workers, host_ends)
        )
        self._process.start()
        os.close(to_dispatcher_r)
        os.close(from_dispatcher_w)
        self._waiting: dict[int, threading.Lock] = {}
        self._next_id = 0
        threading.Thread(target=self._take_results, daemon=True).start()

    def _take_results(self) -> None:
        ids = msgpack.Unpacker()
        while data := os.read(self._from_dispatcher, _READ):
            ids.feed(data)
            for task_id in ids:
                self._waiting.pop(task_id).release()

    def submit(self, kind: str, arg: Any) -> threading.Lock:
        task_id = self._next_id
        self._next_id += 1
        done = threading.Lock()
        done.acquire()
        self._waiting[task_id] = done
        os.write(self._to_dispatcher, msgpack.packb(task_id))
        return done

    def wait(self, handle: threading.Lock) -> None:
        handle.acquire()

    def stop(self) -> None:
        os.close(self._to_dispatcher)
        self._process.join()
        os.close(self._from_dispatcher)
