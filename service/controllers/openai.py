"""OpenAI-compatible completions: `POST /v1/completions`, whole or streamed as SSE chunks.

Errors on this route use OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from service.exceptions import ServiceError
from service.inspection import Inspector
from service.limits import Admission
from service.openai.errors import openai_error_handler, openai_error_responses
from service.openai.job import CompletionJob
from service.openai.schemas import Completion, CompletionRequest
from service.openapi import JSONOrEventStreamOperation
from service.registry import ModelRegistry
from service.security import client_key
from service.settings import Settings
from service.sse import EventStream


class OpenAIController(Controller):
    path = "/"
    tags = ["openai"]
    # Every class the app maps too, so that none of the app's native handlers wins here.
    exception_handlers = {
        ServiceError: openai_error_handler,
        HTTPException: openai_error_handler,
        Exception: openai_error_handler,
    }

    @post(
        "/completions",
        operation_id="createCompletion",
        status_code=HTTP_200_OK,
        responses=openai_error_responses(400, 404, 413, 429, 500, 503, 504),
        operation_class=JSONOrEventStreamOperation,
    )
    async def create_completion(
        self,
        data: JSONBody[CompletionRequest],
        request: Request,
        registry: NamedDependency[ModelRegistry],
        inspector: NamedDependency[Inspector],
        admission: NamedDependency[Admission],
        settings: NamedDependency[Settings],
    ) -> Completion | EventStream:
        """OpenAI-compatible text completion (the official `openai` client works against
        `/v1`). `logprobs` reports the model's own log-probabilities, before temperature,
        top_k/top_p/min_p filtering and the repetition penalty; with `echo` the prompt's tokens
        are scored too (the first has no log-probability: null). With `stream: true` the answer
        is Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`; bad input
        is refused with a 4xx before the stream starts."""
        job = CompletionJob(data, registry.get(data.model), settings)
        await job.start(inspector, admission, client_key(request))
        if data.stream:
            return EventStream(job.events())
        return await job.whole()
