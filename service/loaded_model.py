"""A model as the service holds it: its checkpoint on a device, its engine, and what the
inspection endpoints precompute from its weights."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import torch
import torch.nn.functional as F

from models.bigram import empirical_table
from models.checkpoint import Checkpoint, Model, ModelKind
from models.tokenizer import TextTokenizer, UnknownCharacterError
from service.engine import Engine, EngineConfig
from service.exceptions import InvalidRequestError
from service.schemas import ModelInfo


@dataclass(frozen=True)
class LoadedModel:
    """One checkpoint on its device, with what the inspection endpoints precompute."""

    id: str
    checkpoint: Checkpoint
    device: torch.device
    # Rows of the model's token vectors scaled to length 1: cosine scores and analogies.
    unit_vectors: torch.Tensor
    # Add-one smoothed P(next = j | current = i) of the training split; bigram manifests only.
    empirical: torch.Tensor | None
    # Owns generation for this model: continuous batching in a decode thread of its own.
    engine: Engine

    @property
    def model(self) -> Model:
        return self.checkpoint.model

    @property
    def tokenizer(self) -> TextTokenizer:
        return self.checkpoint.tokenizer

    @property
    def kind(self) -> ModelKind:
        return self.checkpoint.kind

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def parameters(self) -> int:
        """Parameters counted once: `parameters()` yields a tied tensor a single time."""
        return sum(p.numel() for p in self.model.parameters())

    def encode(self, text: str, param: str) -> list[int]:
        """Token ids of `text`; a character outside the vocabulary is the caller's error."""
        try:
            return self.tokenizer.encode(text)
        except UnknownCharacterError as err:
            raise InvalidRequestError(
                f"`{param}` is not valid for model {self.id!r}: {err}", param=param
            ) from None

    def prompt_ids(self, prompt: str, param: str = "prompt") -> list[int]:
        """Token ids to generate after: those of `prompt`, or the start token if it is empty."""
        return self.encode(prompt, param) or [self.tokenizer.start_id]

    def token_id(self, token: str, param: str) -> int:
        """The id of `token`, which must be exactly one token of this model. A subword
        vocabulary stores words with their leading space (" king"), so a bare word that
        splits is looked up with one too."""
        ids = self.encode(token, param)
        if len(ids) != 1 and getattr(self.tokenizer, "kind", "char") == "bpe":
            spaced = self.encode(" " + token, param)
            ids = spaced if len(spaced) == 1 else ids
        if len(ids) != 1:
            raise InvalidRequestError(
                f"`{param}` must be exactly one token of model {self.id!r}, but {token!r} is "
                f"{len(ids)} tokens; POST /v1/tokenize shows how text splits into tokens",
                param=param,
            )
        return ids[0]

    def describe(self) -> ModelInfo:
        manifest = self.checkpoint.manifest
        return ModelInfo(
            id=self.id,
            object="model",
            created=unix_time(manifest.get("created_at")),
            owned_by="tinygpt-serve",
            kind=self.kind,
            vocab_size=self.vocab_size,
            parameters=self.parameters,
            context_length=self.model.block_size,
            device=str(self.device),
            metrics=manifest.get("metrics", {}),
            created_at=manifest.get("created_at"),
        )


def unix_time(iso: str | None) -> int:
    """Seconds since the epoch of an ISO 8601 time (naive means UTC); 0 if absent or unreadable."""
    if not iso:
        return 0
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return 0
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def prepare_model(
    model_id: str, checkpoint: Checkpoint, device: torch.device, engine_config: EngineConfig
) -> LoadedModel:
    vectors = checkpoint.model.token_vectors().detach()
    counts = checkpoint.manifest.get("bigram_counts")
    empirical = None
    if checkpoint.kind == "bigram" and counts is not None:
        empirical = empirical_table(torch.tensor(counts, dtype=torch.long)).to(device)
    return LoadedModel(
        id=model_id,
        checkpoint=checkpoint,
        device=device,
        unit_vectors=F.normalize(vectors, dim=1),
        empirical=empirical,
        engine=Engine(checkpoint.model, checkpoint.tokenizer, engine_config),
    )
