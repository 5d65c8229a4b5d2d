"""Prompts as OpenAI sends them (texts or token ids), checked against a model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.exceptions import InvalidRequestError
from service.limits import check_text_length
from service.loaded_model import LoadedModel
from service.settings import Settings


@dataclass(frozen=True)
class Prompt:
    text: str  # the prompt's text: as sent, or its token ids decoded
    ids: list[int]  # what the model reads: never empty (an empty text is the start token)
    tokens: int  # the request's own tokens: an empty text's start token does not count


def prompts_of(
    value: str | Sequence[str | int | Sequence[int]],
    model: LoadedModel,
    settings: Settings,
    param: str,
) -> list[Prompt]:
    """`value` as prompts: a text, texts, one list of token ids, or lists of token ids. A list
    that mixes these kinds, or a token id outside the model's vocabulary, is a 400."""
    if isinstance(value, str):
        return [text_prompt(value, model, settings, param)]
    kinds = {type(item) for item in value}
    if kinds == {str}:
        return [
            text_prompt(text, model, settings, f"{param}[{i}]")
            for i, text in enumerate(value)
            if isinstance(text, str)
        ]
    if kinds == {int}:
        ids = [int(t) for t in value if isinstance(t, int)]
        return [token_prompt(ids, model, settings, param)]
    if kinds == {list}:
        return [
            token_prompt(list(ids), model, settings, f"{param}[{i}]")
            for i, ids in enumerate(value)
            if isinstance(ids, list)
        ]
    raise InvalidRequestError(
        f"`{param}` mixes texts, token ids and lists of token ids; send a text, a list of "
        "texts, a list of token ids, or a list of lists of token ids",
        param=param,
    )


def text_prompt(text: str, model: LoadedModel, settings: Settings, param: str) -> Prompt:
    check_text_length(settings, text, param)
    ids = model.encode(text, param)
    return Prompt(text=text, ids=ids or [model.tokenizer.start_id], tokens=len(ids))


def token_prompt(ids: list[int], model: LoadedModel, settings: Settings, param: str) -> Prompt:
    limit = settings.max_prompt_chars  # no more tokens than a text prompt may have characters
    if len(ids) > limit:
        raise InvalidRequestError(
            f"`{param}` has {len(ids)} tokens, more than this server's limit of {limit} "
            "(TINYGPT_MAX_PROMPT_CHARS); send a shorter prompt",
            param=param,
        )
    for i, token_id in enumerate(ids):
        if token_id >= model.vocab_size:
            raise InvalidRequestError(
                f"`{param}[{i}]` is token id {token_id}, but model {model.id!r} has token ids "
                f"0 to {model.vocab_size - 1}",
                param=f"{param}[{i}]",
            )
    return Prompt(text=model.tokenizer.decode(ids), ids=ids, tokens=len(ids))
