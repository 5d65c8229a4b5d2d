"""A model's training timeline: how its token vectors (and a bigram's table) changed from
step 0 to the end of training."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import Parameter

from service import timeline
from service.controllers import ModelIdPath, error_responses
from service.exceptions import InvalidRequestError
from service.inspection import Inspector
from service.registry import ModelRegistry
from service.schemas import (
    DEFAULT_TIMELINE_NEIGHBOURS,
    MAX_COUNT,
    MAX_TIMELINE_NEIGHBOURS,
    MAX_TIMELINE_QUERY_CHARS,
    MAX_TIMELINE_TOKENS,
    TimelineTable,
    TrainingTimeline,
)

TIMELINE_ERRORS = error_responses(400, 404, 503)


def split_tokens(tokens: str | None) -> list[str]:
    """`a,e,king` -> the tokens between the commas, each kept exactly (a space is a token)."""
    if tokens is None or tokens == "":
        return []
    parts = tokens.split(",")
    if len(parts) > MAX_TIMELINE_TOKENS:
        raise InvalidRequestError(
            f"`tokens` lists {len(parts)} tokens; ask about at most {MAX_TIMELINE_TOKENS}",
            param="tokens",
        )
    if "" in parts:
        raise InvalidRequestError(
            "`tokens` has an empty entry: separate the tokens by single commas",
            param="tokens",
        )
    return parts


class TimelineController(Controller):
    path = "/models"
    tags = ["inspection"]

    @get("/{model_id:str}/timeline", operation_id="trainingTimeline", responses=TIMELINE_ERRORS)
    async def training_timeline(
        self,
        model_id: ModelIdPath,
        registry: NamedDependency[ModelRegistry],
        inspector: NamedDependency[Inspector],
        tokens: Annotated[
            str | None,
            Parameter(
                max_length=MAX_TIMELINE_QUERY_CHARS,
                description=f"comma-separated tokens (at most {MAX_TIMELINE_TOKENS}, e.g. "
                "`a,e,king`) whose neighbours to list at every step; each must be one token "
                "of the model and among those the timeline recorded",
            ),
        ] = None,
        k: Annotated[
            int,
            Parameter(
                ge=1,
                le=MAX_TIMELINE_NEIGHBOURS,
                description="neighbours per token and step",
            ),
        ] = DEFAULT_TIMELINE_NEIGHBOURS,
    ) -> TrainingTimeline:
        """Give the losses, token map and chosen tokens' neighbours at every recorded step."""
        model = registry.get(model_id, "model_id")
        query = split_tokens(tokens)
        return await inspector.compute(timeline.training_timeline, model, query, k)

    @get(
        "/{model_id:str}/timeline/table",
        operation_id="timelineTable",
        responses=TIMELINE_ERRORS,
    )
    async def timeline_table(
        self,
        model_id: ModelIdPath,
        registry: NamedDependency[ModelRegistry],
        inspector: NamedDependency[Inspector],
        step: Annotated[
            int,
            Parameter(
                ge=0,
                le=MAX_COUNT,
                schema_extra={"minimum": 0},
                description="a step the timeline recorded (see its `steps`)",
            ),
        ],
    ) -> TimelineTable:
        """Give a bigram's table P(next | current) at a recorded step of its training."""
        model = registry.get(model_id, "model_id")
        if model.kind != "bigram":
            raise InvalidRequestError(
                f"model {model.id!r} is a {model.kind} model: only a bigram's timeline "
                "records a table of P(next | current); its timeline's `frames` map its "
                "token embeddings",
                param="model_id",
            )
        return await inspector.compute(timeline.timeline_table, model, step)
