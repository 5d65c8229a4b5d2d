"""`tinygpt serve --workers N`: N processes serving one port, each from a listening socket of
its own.

uvicorn's own supervisor hands one listening socket to all its workers, and the worker the
kernel wakes first accepts a burst of new connections whole: 32 benchmark clients connecting
at once all landed on one of two workers, which then served their keep-alive connections
alone. Here the port is bound N times with SO_REUSEPORT, one socket a worker, and the kernel
spreads new connections over the sockets by their addresses.

The sockets are bound here, in the supervisor: a port in use is refused before any worker
starts, and a worker that exits unexpectedly is started again on its own socket, where new
connections wait meanwhile. SIGTERM (or SIGINT) is handed on to every worker, each drains
(service/draining.py), and the supervisor returns once all have stopped.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import threading
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

import uvicorn
from uvicorn.config import STARTUP_FAILURE

# Beside uvicorn's own lines, in the same format.
log = logging.getLogger("uvicorn.error")

multiprocessing.allow_connection_pickling()  # the workers get their sockets from here
SPAWN = multiprocessing.get_context("spawn")  # fresh interpreters: no torch state forked


def listening_sockets(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """`count` sockets listening on one port; raises OSError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            for other in sockets:
                other.close()
            raise
        port = sock.getsockname()[1]  # port 0: the rest join the port the first one got
        sock.listen(backlog)
        sockets.append(sock)
    return sockets


def run_worker(config: uvicorn.Config, sock: socket.socket) -> None:
    """One worker process: uvicorn's server on `sock`, status 3 when it could not start."""
    config.configure_logging()
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def supervise(config: uvicorn.Config, count: int) -> int:
    """Run `count` workers of `config` until SIGTERM or SIGINT; 0 then, 3 (uvicorn's status
    for a failed start) when a worker could not start."""
    try:
        sockets = listening_sockets(config.host, config.port, count, config.backlog)
    except OSError as err:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, err.strerror or err)
        return STARTUP_FAILURE
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())

    def start(index: int) -> BaseProcess:
        worker = SPAWN.Process(target=run_worker, args=(config, sockets[index]))
        worker.start()
        return worker

    workers = [start(i) for i in range(count)]
    host, port = sockets[0].getsockname()[:2]
    log.info(
        "%d workers [%s] serving http://%s:%d",
        count,
        ", ".join(str(w.pid) for w in workers),
        host,
        port,
    )
    status = 0
    while not stopping.is_set():
        wait([worker.sentinel for worker in workers], timeout=0.5)
        for index, worker in enumerate(workers):
            if worker.exitcode is None or stopping.is_set():
                continue
            if worker.exitcode == STARTUP_FAILURE:
                log.error("worker [%d] failed to start: stopping the others", worker.pid)
                status = STARTUP_FAILURE
                stopping.set()
            else:
                log.warning(
                    "worker [%d] exited (%s): starting another", worker.pid, worker.exitcode
                )
                workers[index] = start(index)
    for worker in workers:
        worker.terminate()  # SIGTERM: each drains, then finishes its requests
    for worker in workers:
        worker.join()
    for sock in sockets:
        sock.close()
    log.info("all %d workers stopped", count)
    return status
