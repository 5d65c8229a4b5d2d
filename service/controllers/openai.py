"""OpenAI-compatible routes: completions and chat completions (whole or streamed as SSE
chunks) and embeddings.

Errors on these routes use OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import base64

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from service.exceptions import InvalidRequestError, ServiceError
from service.inspection import Inspector
from service.limits import Admission
from service.openai.chat import ChatJob
from service.openai.errors import openai_error_handler, openai_error_responses
from service.openai.job import CompletionJob
from service.openai.prompts import prompts_of
from service.openai.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
)
from service.openapi import JSONOrEventStreamOperation
from service.registry import ModelRegistry
from service.security import client_key
from service.settings import Settings
from service.sse import EventStream

GENERATION_ERRORS = openai_error_responses(400, 401, 404, 413, 429, 500, 503, 504)


async def answer(
    job: CompletionJob, inspector: Inspector, admission: Admission, request: Request
) -> object:
    await job.start(inspector, admission, client_key(request))
    if job.data.stream:
        return EventStream(job.events())
    return await job.whole()


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
        responses=GENERATION_ERRORS,
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
        `/v1`). `prompt` may be text or token ids. `logprobs` reports the model's own
        log-probabilities, before temperature, top_k/top_p/min_p filtering and the penalties;
        with `echo` the prompt's tokens are scored too (the first has no log-probability:
        null), and `max_tokens: 0` with `echo` scores the prompt alone. With `stream: true` the
        answer is Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`; bad
        input is refused with a 4xx before the stream starts."""
        job = CompletionJob.of(data, registry.get(data.model), settings)
        return await answer(job, inspector, admission, request)  # type: ignore[return-value]

    @post(
        "/chat/completions",
        operation_id="createChatCompletion",
        status_code=HTTP_200_OK,
        responses=GENERATION_ERRORS,
        operation_class=JSONOrEventStreamOperation,
    )
    async def create_chat_completion(
        self,
        data: JSONBody[ChatCompletionRequest],
        request: Request,
        registry: NamedDependency[ModelRegistry],
        inspector: NamedDependency[Inspector],
        admission: NamedDependency[Admission],
        settings: NamedDependency[Settings],
    ) -> ChatCompletion | EventStream:
        """OpenAI-compatible chat completion for base models: the messages are rendered as
        `"{role}: {content}\\n"` each, then `"assistant:"` (a checkpoint may set its own
        template), and the reply ends before the next `"\\n{role}:"`. Streams in OpenAI's
        `chat.completion.chunk` shape with `stream: true`."""
        job = ChatJob.of_chat(data, registry.get(data.model), settings)
        return await answer(job, inspector, admission, request)  # type: ignore[return-value]

    @post(
        "/embeddings",
        operation_id="createEmbedding",
        status_code=HTTP_200_OK,
        responses=openai_error_responses(400, 401, 404, 413, 503),
    )
    async def create_embedding(
        self,
        data: JSONBody[EmbeddingRequest],
        registry: NamedDependency[ModelRegistry],
        inspector: NamedDependency[Inspector],
        settings: NamedDependency[Settings],
    ) -> EmbeddingList:
        """OpenAI-compatible embeddings: a text's vector is the mean, over its tokens, of what
        the model reads to predict the next token (the GPT's final normalised hidden states;
        the bigram's table rows). Text or token ids; `encoding_format` float or base64."""
        model = registry.get(data.model)
        prompts = prompts_of(data.input, model, settings, "input")
        vectors = await inspector.text_embeddings(model, [p.ids for p in prompts])
        size = vectors.shape[1]
        if data.dimensions is not None and data.dimensions != size:
            raise InvalidRequestError(
                f"model {model.id!r} makes vectors of {size} dimensions and cannot shorten them; "
                f"leave out `dimensions` or set it to {size}",
                param="dimensions",
            )
        embeddings = [
            Embedding(
                object="embedding",
                index=i,
                embedding=(
                    base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode()
                    if data.encoding_format == "base64"
                    else vector.tolist()
                ),
            )
            for i, vector in enumerate(vectors)
        ]
        tokens = sum(p.tokens for p in prompts)
        return EmbeddingList(
            object="list",
            data=embeddings,
            model=model.id,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
