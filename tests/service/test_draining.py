"""SIGTERM: /ready answers 503 at once, and the server's own handler runs after the delay."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from types import SimpleNamespace

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.draining import Drain, drain_on_sigterm
from service.settings import Settings
from tests.service.test_app import assert_error

pytestmark = pytest.mark.anyio


async def test_sigterm_drains_first_and_hands_on_after_the_delay():
    calls: list[float] = []

    def server_handler(signum, frame):
        calls.append(time.monotonic())

    previous = signal.signal(signal.SIGTERM, server_handler)
    try:
        app = SimpleNamespace(state=SimpleNamespace(drain=Drain(0.3)))
        async with drain_on_sigterm(app):  # type: ignore[arg-type]
            sent = time.monotonic()
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.1)
            assert app.state.drain.draining and calls == []
            await asyncio.sleep(0.4)
            assert len(calls) == 1 and calls[0] - sent >= 0.3
        assert signal.getsignal(signal.SIGTERM) is server_handler  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)


async def test_a_second_sigterm_ends_the_delay():
    loop = asyncio.get_running_loop()
    drain, calls = Drain(60), []
    drain.begin(loop, lambda: calls.append("first"))
    assert drain.draining and calls == []
    drain.begin(loop, lambda: calls.append("second"))
    assert calls == ["second"]


async def test_without_a_server_handler_nothing_is_taken():
    previous = signal.getsignal(signal.SIGTERM)
    app = SimpleNamespace(state=SimpleNamespace(drain=Drain(0)))
    async with drain_on_sigterm(app):  # type: ignore[arg-type]
        assert signal.getsignal(signal.SIGTERM) is previous


async def test_ready_answers_503_while_draining(settings: Settings):
    app = create_app(msgspec.structs.replace(settings, compile_decode=False))
    async with AsyncTestClient(app=app) as client:
        assert (await client.get("/ready")).status_code == 200
        app.state.drain.draining = True
        message = assert_error(await client.get("/ready"), 503, "not_ready")
        assert message.startswith("draining")
        assert (await client.get("/health")).status_code == 200  # still alive, still serving
        assert (await client.get("/v1/models")).status_code == 200
