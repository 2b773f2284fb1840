"""One of our worker processes on a node of a Dask cluster (the host's ``backend="dask"``).

Started by `workers.node_plugin.NodePlugin`, never by hand::

    python -m workers.remote HOST PORT DASK_ADDRESS INDEX DASK_PID RESOURCES_JSON  < AUTHKEY_HEX

It connects back to the host over an authenticated connection and from then on speaks exactly
the protocol of a local worker's pipe, so timeouts, cancellation, memory limits, crash handling
and events behave as they do locally. It exits within `runtime.HOST_CHECK_INTERVAL` seconds of
its Dask worker's death, and at once when the host goes. It imports no Dask: it stays as small
as a local worker.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
from multiprocessing.connection import Client

import msgpack

from workers.host_link import process_alive
from workers.runtime import HOST_CHECK_INTERVAL, worker_main


def main(argv: list[str]) -> None:
    """Connect to the host, wait to be taken into its pool, then serve it like a local worker."""
    host, port, address, index, dask_pid, resources = argv
    authkey = bytes.fromhex(sys.stdin.readline().strip())  # never on the command line: /proc shows it
    conn = Client((host, int(port)), authkey=authkey)
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:  # small replies go out at once (no Nagle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.send_bytes(msgpack.packb([address, int(index), os.getpid(), json.loads(resources)]))
    while not select.select([conn], [], [], HOST_CHECK_INTERVAL)[0]:
        if not process_alive(int(dask_pid)):
            os._exit(0)  # the Dask worker died while this process waited to be used
    try:
        worker_id, namespace, log_level = msgpack.unpackb(conn.recv_bytes())
    except (EOFError, OSError):
        os._exit(0)  # the host went away, or shut down, before using this process
    worker_main(conn, worker_id, int(dask_pid), [], None, namespace, address, log_level=log_level)


if __name__ == "__main__":
    main(sys.argv[1:])
