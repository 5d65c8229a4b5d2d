"""What one request and one client may ask of a model's engine, and handing requests to it.

A request's sequences (prompts x n) are admitted whole or refused whole: more than
`max_request_sequences` (or than the engine could ever hold) is a 400 at once; a client that
already has `max_client_sequences` sequences queued or running (across every replica when the
counts are shared, see service/shared_limits.py) gets a 429 until some end; a full engine is a
503. A sequence stops counting against its client when it leaves the engine, before its reader
sees the end, so a client that waits for one answer before sending the next request is never
refused for its own previous one.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.engine import (
    Completion,
    Engine,
    EngineClosedError,
    EngineError,
    GenerationRequest,
    QueueFullError,
    Stream,
)
from service.exceptions import (
    ClientBusyError,
    GenerationFailedError,
    GenerationTimeoutError,
    InvalidRequestError,
    NotReadyError,
    OverloadedError,
)
from service.settings import Settings
from service.shared_limits import LimitStore, OverCapError


def check_text_length(settings: Settings, text: str, param: str) -> None:
    limit = settings.max_prompt_chars
    if len(text) > limit:
        raise InvalidRequestError(
            f"`{param}` has {len(text)} characters, more than this server's limit of "
            f"{limit} (TINYGPT_MAX_PROMPT_CHARS); send a shorter text",
            param=param,
        )


def check_new_tokens(settings: Settings, count: int, param: str) -> None:
    cap = settings.max_new_tokens
    if count > cap:
        raise InvalidRequestError(
            f"`{param}` is {count}, above this server's cap of {cap} "
            f"(TINYGPT_MAX_NEW_TOKENS); ask for at most {cap}",
            param=param,
        )


def check_produced(completions: Sequence[Completion], settings: Settings) -> None:
    """A generation that timed out (TINYGPT_REQUEST_TIMEOUT) before any of its sequences
    produced a token is a 504, not an empty answer."""
    timed_out = any(c.finish_reason == "timeout" for c in completions)
    if timed_out and not any(c.tokens for c in completions):
        raise GenerationTimeoutError(
            f"no token was generated within the {settings.request_timeout:g} s request "
            "timeout (TINYGPT_REQUEST_TIMEOUT); retry, or ask a less busy server"
        )


def generation_failed(err: EngineError) -> GenerationFailedError:
    return GenerationFailedError(f"{err}; retry, and report it if it happens again")


class Admission:
    """Counts each client's sequences in the engines (in its LimitStore: across replicas when
    that is shared) and hands requests to an engine."""

    def __init__(self, settings: Settings, counts: LimitStore):
        self.settings = settings
        self.counts = counts

    def request_limit(self, engine: Engine) -> int:
        """The most sequences one request may bring to `engine`."""
        return min(
            self.settings.max_request_sequences,
            self.settings.max_client_sequences,
            engine.config.capacity,
        )

    def check_size(self, engine: Engine, sequences: int, param: str) -> None:
        """A 400 for a request of more sequences than it may ever have; `param` names the
        request field whose size decides their number."""
        limit = self.request_limit(engine)
        if sequences > limit:
            raise InvalidRequestError(
                f"this request asks for {sequences} sequences (prompts x n), more than the "
                f"{limit} one request may have on this server (TINYGPT_MAX_REQUEST_SEQUENCES); "
                "split it into smaller requests",
                param=param,
            )

    async def submit(
        self, engine: Engine, requests: Sequence[GenerationRequest], client: str, param: str
    ) -> list[Stream]:
        """Queue `requests` together for `client` (see `check_size` for `param`)."""
        self.check_size(engine, len(requests), param)
        cap = self.settings.max_client_sequences
        try:
            releases = await self.counts.acquire(client, len(requests), cap)
        except OverCapError as err:
            where = " across the replicas" if self.counts.shared else ""
            raise ClientBusyError(
                f"this client already has {err.held} sequences generating or queued{where}, "
                f"and this request would take it past its limit of {cap} "
                "(TINYGPT_MAX_CLIENT_SEQUENCES); wait for some to finish, then retry"
            ) from None
        try:
            streams = enqueue(engine, requests)
        except BaseException:
            for release in releases:
                release()
            raise
        for stream, release in zip(streams, releases, strict=True):
            stream.on_end(release)
        return streams


def enqueue(engine: Engine, requests: Sequence[GenerationRequest]) -> list[Stream]:
    """`engine.submit_all`, its refusals in the words the client is told."""
    try:
        return engine.submit_all(requests)
    except QueueFullError as err:
        raise OverloadedError(
            f"the model is generating at capacity and its queue is full ({err}); retry "
            "after the Retry-After delay"
        ) from None
    except EngineClosedError:
        raise NotReadyError("the server is shutting down; retry on another instance") from None
    except ValueError as err:
        raise InvalidRequestError(str(err), param="prompt") from None
