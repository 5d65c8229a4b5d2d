"""Chat completions for base models: the conversation rendered into one prompt by a chat
template, the reply generated until the next turn would begin.

The default template writes each message as `"{role}: {content}\\n"` and then `"assistant:"`;
the reply ends before the next `"\\n{role}:"` of any role (so a base model that goes on to
write the user's next line stops there). A checkpoint may set its own in its manifest:
`"chat_template": {"message": "...{role}...{content}...", "reply": "..."}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import get_args

import msgspec

from service.engine import Completion as EngineCompletion
from service.engine import TokenEvent
from service.loaded_model import LoadedModel
from service.openai.job import Choice, CompletionJob
from service.openai.prompts import Prompt, text_prompt
from service.openai.schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    ChatMessage,
    ChatReply,
    ChatTokenLogprob,
    ChatTopLogprob,
    CompletionUsage,
    Role,
)
from service.settings import Settings
from service.sse import sse

DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class ChatTemplate:
    message: str = "{role}: {content}\n"
    reply: str = "assistant:"

    @classmethod
    def of(cls, model: LoadedModel) -> ChatTemplate:
        custom = model.checkpoint.manifest.get("chat_template") or {}
        return cls(**{k: v for k, v in custom.items() if k in ("message", "reply")})

    def render(self, messages: list[ChatMessage]) -> str:
        turns = [self.message.format(role=m.role, content=m.content) for m in messages]
        return "".join(turns) + self.reply

    def turn_starts(self) -> tuple[str, ...]:
        """What begins the next message of each role, seen from the end of a reply."""
        before_content = self.message.split("{content}")[0]
        return tuple("\n" + before_content.format(role=r).rstrip() for r in get_args(Role))


class ChatJob(CompletionJob):
    """A chat completion: one prompt (the rendered conversation), n choices, chat's shapes."""

    id_prefix = "chatcmpl"

    @classmethod
    def of_chat(
        cls, data: ChatCompletionRequest, model: LoadedModel, settings: Settings
    ) -> ChatJob:
        max_tokens = data.max_completion_tokens or data.max_tokens or DEFAULT_MAX_TOKENS
        logprobs = (data.top_logprobs or 0) if data.logprobs else None
        return cls(
            data,
            model,
            settings,
            best_of=None,
            max_tokens=max_tokens,
            logprobs=logprobs,
            echo=False,
        )

    @cached_property
    def template(self) -> ChatTemplate:
        return ChatTemplate.of(self.model)

    def prompts(self) -> list[Prompt]:
        assert isinstance(self.data, ChatCompletionRequest)
        rendered = self.template.render(self.data.messages)
        return [text_prompt(rendered, self.model, self.settings, "messages")]

    def extra_stops(self) -> tuple[str, ...]:
        return self.template.turn_starts()

    def chat_logprobs(
        self, events: tuple[TokenEvent, ...] | list[TokenEvent]
    ) -> ChatLogprobs | None:
        if self.logprobs is None:
            return None
        return ChatLogprobs(
            content=[
                ChatTokenLogprob(
                    token=event.text,
                    logprob=event.logprob,
                    bytes=list(event.text.encode()),
                    top_logprobs=[
                        ChatTopLogprob(token=t.text, logprob=t.logprob, bytes=list(t.text.encode()))
                        for t in event.top_logprobs
                    ],
                )
                for event in events
            ]
        )

    def answer(
        self, picked: list[tuple[int, Choice, EngineCompletion | None]], total: int
    ) -> msgspec.Struct:
        choices = []
        for index, _, completion in picked:
            assert completion is not None  # chat always generates
            choices.append(
                ChatChoice(
                    index=index,
                    message=ChatReply(role="assistant", content=completion.text),
                    logprobs=self.chat_logprobs(completion.tokens),
                    finish_reason=completion.finish_reason,
                )
            )
        return ChatCompletion(
            id=self.id,
            object="chat.completion",
            created=self.created,
            model=self.model.id,
            choices=choices,
            usage=self.usage(total),
        )

    def chat_chunk(
        self, choices: list[ChatChunkChoice], usage: CompletionUsage | None = None
    ) -> bytes:
        return sse(
            ChatCompletionChunk(
                id=self.id,
                object="chat.completion.chunk",
                created=self.created,
                model=self.model.id,
                choices=choices,
                usage=usage,
            )
        )

    def opening(self, choice: Choice) -> bytes | None:
        delta = ChatDelta(role="assistant", content="")
        return self.chat_chunk(
            [ChatChunkChoice(index=choice.index, delta=delta, logprobs=None, finish_reason=None)]
        )

    def token_chunk(self, choice: Choice, event: TokenEvent) -> bytes:
        return self.chat_chunk(
            [
                ChatChunkChoice(
                    index=choice.index,
                    delta=ChatDelta(content=event.text),
                    logprobs=self.chat_logprobs([event]),
                    finish_reason=None,
                )
            ]
        )

    def final_chunk(self, choice: Choice, reason: str) -> bytes:
        end = ChatChunkChoice(
            index=choice.index, delta=ChatDelta(), logprobs=None, finish_reason=reason
        )
        return self.chat_chunk([end])

    def usage_chunk(self, total: int) -> bytes:
        return self.chat_chunk([], self.usage(total))
