"""Leaving a load balancer's rotation on SIGTERM.

uvicorn stops accepting connections as soon as it takes SIGTERM, then lets in-flight requests
finish (TINYGPT_SHUTDOWN_GRACE). A balancer that polls /ready would only see refused
connections. So the app takes SIGTERM first: /ready answers 503 ("draining") at once, the
server keeps serving for TINYGPT_DRAIN_DELAY seconds, so that the balancer stops routing here
while this replica still answers, and only then is uvicorn's own SIGTERM handler called.
The same happens in every worker of `tinygpt serve --workers N`, whose supervisor hands
SIGTERM on to each.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from litestar import Litestar

log = logging.getLogger(__name__)

SignalHandler = Callable[[int, FrameType | None], Any]


class Drain:
    """Whether this process is leaving (SIGTERM taken), and how long it keeps accepting."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.draining = False

    def begin(self, loop: asyncio.AbstractEventLoop, then: Callable[[], object]) -> None:
        """On the event loop: answer 503 from /ready now, call `then` after the delay; a
        second SIGTERM calls it at once."""
        if self.draining:
            then()
            return
        self.draining = True
        log.info(
            "SIGTERM: draining; /ready answers 503, requests are still served for %g s "
            "(TINYGPT_DRAIN_DELAY), then the server stops accepting and lets in-flight work "
            "finish (TINYGPT_SHUTDOWN_GRACE)",
            self.delay_s,
        )
        loop.call_later(self.delay_s, then)


@asynccontextmanager
async def drain_on_sigterm(app: Litestar) -> AsyncIterator[None]:
    """Take SIGTERM in front of the server's own handler while the app runs. Only where a
    handler of the server's is there to defer to, and only on the main thread (signals
    are set there): a test client running the app is left alone."""
    drain: Drain = app.state.drain
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    server_handler: SignalHandler = previous
    loop = asyncio.get_running_loop()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # A signal handler may run between any two bytecodes: hand the work to the loop.
        loop.call_soon_threadsafe(drain.begin, loop, lambda: server_handler(signum, frame))

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
