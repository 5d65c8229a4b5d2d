"""The streaming client of bench/http.py against a real server: it must count every token
event of a chunked answer, read a whole error answer, and reuse its connection after both."""

from __future__ import annotations

import argparse
import asyncio

import pytest
import uvloop

from bench.http import (
    RequestTiming,
    ResponseReader,
    StreamingConnection,
    request_lengths,
    stream_one,
)
from tests.integration.conftest import Server
from tests.service.tiny_models import GPT_ID


def test_the_benchmark_client_counts_every_token_and_reads_errors_whole(server: Server):
    body = {"model": GPT_ID, "prompt": "ROMEO:", "max_new_tokens": 12, "stream": True}

    async def requests() -> tuple[list[RequestTiming], str]:
        connection = StreamingConnection(server.url, timeout=60)
        try:
            first = await stream_one(connection, {**body, "seed": 1})
            with pytest.raises(RuntimeError) as refused:
                await stream_one(connection, {**body, "model": "no-such-model"})
            second = await stream_one(connection, {**body, "seed": 2})
            return [first, second], str(refused.value)
        finally:
            connection.close()

    timings, refusal = uvloop.run(requests())  # the benchmark's loop
    assert [t.tokens for t in timings] == [12, 12]
    assert all(len(t.itls) == 11 and 0 < t.ttft <= t.e2e for t in timings)
    assert refusal.startswith("HTTP 404") and "no-such-model" in refusal


class Transport(asyncio.Transport):
    """A connection that takes what ResponseReader writes and goes nowhere."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass


@pytest.mark.parametrize("status", [b"200 OK", b"500 Internal Server Error"])
def test_the_benchmark_client_reads_an_answer_that_arrives_a_byte_at_a_time(status: bytes):
    events = b"event: token\ndata: {}\n\n" * 2
    answer = (
        b"HTTP/1.1 %s\r\ntransfer-encoding: chunked\r\n\r\n" % status
        + b"%x\r\n" % len(events)
        + events
        + b"\r\n0\r\n\r\n"
    )

    async def read() -> tuple[tuple[dict, bytes], list[float]]:
        reader, stamps = ResponseReader(), []
        reader.connection_made(Transport())
        response = reader.send(b"POST / HTTP/1.1\r\n\r\n", stamps)
        for i in range(len(answer)):
            assert not response.done()
            reader.data_received(answer[i : i + 1])
        assert response.done(), "the answer's last chunk went unnoticed"
        return response.result(), stamps

    (headers, body), stamps = asyncio.run(read())
    assert len(stamps) == 2
    # a stream's body is counted, not kept; an error's is kept for its message
    assert (headers[":status"], body) in {("200", b""), ("500", events)}


def test_each_client_asks_for_the_same_lengths_over_http_and_in_process():
    args = argparse.Namespace(max_new_tokens=120, length_spread=0.5, requests_per_client=16)
    lengths = [request_lengths(args, client) for client in range(32)]
    assert lengths == [request_lengths(args, client) for client in range(32)]
    assert all(60 <= n <= 120 for row in lengths for n in row)
    assert len({tuple(row) for row in lengths}) == 32  # clients do not move in step
    fixed = argparse.Namespace(max_new_tokens=120, length_spread=0.0, requests_per_client=3)
    assert request_lengths(fixed, 7) == [120, 120, 120]
