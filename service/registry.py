"""The loaded models, and the model work the HTTP handlers ask for.

Handlers hand over request Structs and get response Structs back; every tensor stays in here.
Model work runs in worker threads (at most `Settings.worker_threads` at once) under
`torch.inference_mode()`, so the event loop keeps serving while a model computes.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import torch
import torch.nn.functional as F

from models.bigram import empirical_table
from models.checkpoint import MANIFEST_FILE, Checkpoint, Model, ModelKind, load_checkpoint
from models.device import resolve_device
from models.tokenizer import UnknownCharacterError
from service import projections
from service.engine import LOGPROB_FLOOR, Engine, EngineConfig
from service.engine.metrics import EngineMetrics
from service.exceptions import (
    InvalidRequestError,
    NoModelsLoadedError,
    NotReadyError,
    UnknownModelError,
)
from service.limits import check_text_length
from service.metrics import ENGINE_SOURCES
from service.schemas import (
    BigramTable,
    DetokenizeRequest,
    DetokenizeResponse,
    EmbeddingProjection,
    ModelInfo,
    Neighbour,
    NeighbourQuery,
    NeighboursRequest,
    NeighboursResponse,
    NextTokenRequest,
    NextTokenResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenProbability,
)
from service.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
KEEPS_SERVING = "; the loaded version keeps serving"


class Tokenizer(Protocol):
    """What the registry needs of a checkpoint's tokenizer, whichever kind it is."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def start_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_text(self, token_id: int) -> str: ...


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
    def tokenizer(self) -> Tokenizer:
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


def checkpoint_folders(root: str | Path) -> list[Path]:
    """Every folder under `root` by name (hidden ones aside): each should be a checkpoint."""
    root = Path(root)
    if not root.is_dir():
        raise NoModelsLoadedError(
            f"checkpoint folder {root} does not exist; point --checkpoints or "
            "TINYGPT_CHECKPOINTS at the folder that holds the model folders"
        )
    folders = sorted(
        path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")
    )
    if not folders:
        raise NoModelsLoadedError(
            f"no checkpoint under {root}: each model is a folder holding {MANIFEST_FILE}; "
            "train one with `tinygpt train` or point --checkpoints elsewhere"
        )
    return folders


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


def run_in_inference_mode(fn: Callable[..., T], *args: Any) -> T:
    with torch.inference_mode():
        return fn(*args)


@dataclass
class Scan:
    """What one pass over the checkpoint folders found."""

    fresh: dict[str, LoadedModel] = field(default_factory=dict)  # new or changed, engine started
    refused: dict[str, str] = field(default_factory=dict)  # folder name -> why
    unchanged: list[str] = field(default_factory=list)


class ModelRegistry:
    """The models served: every checkpoint folder under `settings.checkpoints`, each with its
    engine. Loading, reloading and unloading take turns (one lock), so two reloads never
    interleave and every engine that stops being served is stopped."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._models: dict[str, LoadedModel] = {}
        self._limiter: anyio.CapacityLimiter | None = None
        # Computed on first request, per model id: the token vectors never change once loaded.
        self._projections: dict[str, EmbeddingProjection] = {}
        self.lifecycle = anyio.Lock()
        self.retired: list[Engine] = []  # replaced by a reload: finishing their requests

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self._models)

    @property
    def model_ids(self) -> list[str]:
        return list(self._models)

    async def load(self) -> None:
        """Load every checkpoint off the event loop; refuses (raises) when none loads."""
        self._limiter = anyio.CapacityLimiter(self.settings.worker_threads)
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        async with self.lifecycle:
            scan = await anyio.to_thread.run_sync(self.scan, {})
            if not scan.fresh:
                raise NoModelsLoadedError(
                    f"no checkpoint under {self.settings.checkpoints} could be loaded: "
                    + "; ".join(f"{name}: {why}" for name, why in scan.refused.items())
                )
            self._models = scan.fresh
        ENGINE_SOURCES.add(id(self), self.engine_metrics)

    async def reload(self) -> Scan:
        """Load every folder anew and swap in the models whose checkpoint verified and
        changed; the engines they replace finish what they run, in a thread, then stop.
        A folder that fails to load (or is gone) leaves its loaded version serving."""
        async with self.lifecycle:
            current = self.loaded_models()
            scan = await anyio.to_thread.run_sync(self.scan, current)
            # One assignment: a request looks its model up once, so it sees the old or the new.
            self._models = {**current, **scan.fresh}
            for model_id in scan.fresh:
                self._projections.pop(model_id, None)
            self.retire([current[m].engine for m in scan.fresh if m in current])
        return scan

    def retire(self, engines: list[Engine]) -> None:
        self.retired = [e for e in self.retired if e.running] + engines
        for engine in engines:
            threading.Thread(
                target=engine.stop,
                kwargs={"drain": True, "timeout": self.settings.request_timeout + 5},
                name="reload-drain",
                daemon=True,
            ).start()

    async def unload(self) -> None:
        """Stop every engine, retired ones too (cancelling what is still generating), and
        forget the models."""
        async with self.lifecycle:
            ENGINE_SOURCES.remove(id(self))
            models, self._models = self._models, {}
            self._projections = {}
            for engine in [*(m.engine for m in models.values()), *self.retired]:
                await anyio.to_thread.run_sync(engine.stop)
            self.retired = []

    def engine_metrics(self) -> dict[str, EngineMetrics]:
        return {model_id: model.engine.metrics for model_id, model in self._models.items()}

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            max_running=self.settings.max_running,
            max_waiting=self.settings.max_waiting,
            compile_decode=self.settings.compile_decode,
        )

    def scan(self, current: dict[str, LoadedModel]) -> Scan:
        """Blocking: load and verify every folder (`load_checkpoint` checks the weights'
        hashes) and start an engine for each one that is new or changed from `current`."""
        device = resolve_device(self.settings.device)
        log.info("loading checkpoints from %s onto %s", self.settings.checkpoints, device)
        folders = checkpoint_folders(self.settings.checkpoints)
        scan = Scan()
        for model_id in sorted(current.keys() - {folder.name for folder in folders}):
            scan.refused[model_id] = "its checkpoint folder is gone" + KEEPS_SERVING
        for folder in folders:
            try:
                # The weights stay ordinary tensors, usable outside inference mode too.
                checkpoint = load_checkpoint(folder, device)
                old = current.get(folder.name)
                if old is not None and old.checkpoint.manifest == checkpoint.manifest:
                    scan.unchanged.append(folder.name)
                    continue
                with torch.inference_mode():
                    model = prepare_model(folder.name, checkpoint, device, self.engine_config())
                model.engine.start()
            # One bad folder must not take the others down: whatever the reason, log it.
            except Exception as err:
                keeps = KEEPS_SERVING if folder.name in current else ""
                scan.refused[folder.name] = f"{err}{keeps}"
                log.error("skipping checkpoint %s: %s", folder, err)
            else:
                scan.fresh[model.id] = model
                log.info(
                    "loaded model %s (%s, %d parameters) on %s",
                    model.id,
                    model.kind,
                    model.parameters,
                    device,
                )
        return scan

    # -- lookups --------------------------------------------------------------------------

    def loaded_models(self) -> dict[str, LoadedModel]:
        if not self._models:
            raise NotReadyError("the models are still loading; retry when GET /ready says 200")
        return self._models

    def get(self, model_id: str, param: str = "model") -> LoadedModel:
        models = self.loaded_models()
        try:
            return models[model_id]
        except KeyError:
            available = ", ".join(sorted(models))
            raise UnknownModelError(
                f"model {model_id!r} is not loaded; available models: {available}",
                param=param,
            ) from None

    def describe(self) -> list[ModelInfo]:
        return [model.describe() for model in self.loaded_models().values()]

    async def compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run model work in a worker thread, at most `worker_threads` at a time."""
        return await anyio.to_thread.run_sync(
            functools.partial(run_in_inference_mode, fn, *args), limiter=self._limiter
        )

    # -- prompt scoring -------------------------------------------------------------------

    async def score_prompt(
        self, model_id: str, prompt: str, top_logprobs: int
    ) -> list[PromptTokenScore]:
        """Each token of `prompt` with the model's log-probability of it given the tokens
        before (None for the first, which has no context), and the `top_logprobs` most likely
        alternatives there; one forward pass per context window, in a worker thread."""
        model = self.get(model_id)
        ids = model.encode(prompt, "prompt")
        return await self.compute(prompt_token_scores, model, ids, top_logprobs)

    # -- next-token distribution ----------------------------------------------------------

    async def next_token(self, request: NextTokenRequest) -> NextTokenResponse:
        """The model's distribution over the token after `request.context`, most likely first."""
        model = self.get(request.model)
        check_text_length(self.settings, request.context, "context")
        context_ids = model.encode(request.context, "context") or [model.tokenizer.start_id]
        distribution, entropy = await self.compute(
            next_token_distribution, model, context_ids, request.temperature, request.top_k
        )
        return NextTokenResponse(
            model=model.id, context=request.context, distribution=distribution, entropy=entropy
        )

    # -- embedding neighbours -------------------------------------------------------------

    async def neighbours(self, request: NeighboursRequest) -> NeighboursResponse:
        """The `k` tokens whose vectors are nearest a token, or an analogy's query vector."""
        model = self.get(request.model)
        analogy = bool(request.positive or request.negative)
        if request.token is not None and analogy:
            raise InvalidRequestError(
                "give either `token` or `positive`/`negative` (an analogy), not both",
                param="token",
            )
        if request.token is None and not analogy:
            raise InvalidRequestError(
                "give a `token` to find its neighbours, or `positive`/`negative` token lists "
                "for an analogy",
                param="token",
            )
        if analogy and request.metric != "cosine":
            raise InvalidRequestError(
                "analogies rank by cosine similarity; leave `metric` out or set it to cosine",
                param="metric",
            )
        if request.token is not None:
            positive = [model.token_id(request.token, "token")]
            negative: list[int] = []
        else:
            positive = [
                model.token_id(token, f"positive[{i}]") for i, token in enumerate(request.positive)
            ]
            negative = [
                model.token_id(token, f"negative[{i}]") for i, token in enumerate(request.negative)
            ]
        neighbours = await self.compute(
            nearest_tokens, model, positive, negative, request.metric, request.k
        )
        query = NeighbourQuery(
            token=request.token,
            positive=request.positive,
            negative=request.negative,
            metric=request.metric,
        )
        return NeighboursResponse(model=model.id, query=query, neighbours=neighbours)

    # -- playground pictures --------------------------------------------------------------

    async def bigram_table(
        self, model_id: str, window: projections.TableWindow | None = None
    ) -> BigramTable:
        """A window of a bigram model's table of P(next | current), learned and empirical."""
        window = window or projections.TableWindow()
        model = self.get(model_id, "model_id")
        if model.kind != "bigram":
            bigrams = [m.id for m in self.loaded_models().values() if m.kind == "bigram"]
            hint = f"; the bigram models here: {', '.join(bigrams)}" if bigrams else ""
            raise InvalidRequestError(
                f"model {model.id!r} is a {model.kind} model, and only bigram models have a "
                f"table of P(next | current){hint}",
                param="model_id",
            )
        window.check(model)
        return await self.compute(projections.bigram_table, model, window)

    async def embedding_projection(
        self, model_id: str, offset: int = 0, limit: int = projections.DEFAULT_EMBEDDING_POINTS
    ) -> EmbeddingProjection:
        """At most `limit` points, from token id `offset` on, of the 2-D PCA projection
        fitted on all of a model's token vectors (computed once per model)."""
        model = self.get(model_id, "model_id")
        projections.check_start(model, "offset", offset, "with ids")
        if model.id not in self._projections:
            self._projections[model.id] = await self.compute(
                projections.embedding_projection, model
            )
        return projections.projection_page(self._projections[model.id], offset, limit)

    # -- tokenization ---------------------------------------------------------------------

    def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        model = self.get(request.model)
        check_text_length(self.settings, request.text, "text")
        ids = model.encode(request.text, "text")
        tokens = [model.tokenizer.token_text(i) for i in ids]
        return TokenizeResponse(model=model.id, ids=ids, tokens=tokens)

    def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        model = self.get(request.model)
        for position, token_id in enumerate(request.ids):
            if token_id >= model.vocab_size:
                raise InvalidRequestError(
                    f"`ids[{position}]` is {token_id}, but model {model.id!r} has token ids "
                    f"0 to {model.vocab_size - 1}",
                    param=f"ids[{position}]",
                )
        return DetokenizeResponse(model=model.id, text=model.tokenizer.decode(request.ids))


# -- model work: these run in worker threads -----------------------------------------------


@dataclass(frozen=True)
class PromptTokenScore:
    token_id: int
    text: str
    logprob: float | None  # None for the first token: nothing comes before it
    top_logprobs: list[tuple[str, float]]  # most likely first; empty for the first token


def prompt_logits(model: LoadedModel, ids: list[int]) -> torch.Tensor:
    """(len(ids) - 1, V) logits: row t predicts ids[t + 1]. Prompts longer than the GPT's
    context are scored in windows overlapping by half, each position once, with at least
    half a window of context."""
    if model.kind == "bigram":
        return model.model.token_vectors()[ids[:-1]]
    block = model.model.block_size
    rows: list[torch.Tensor] = []
    start, scored = 0, 0  # scored: positions t (predicting ids[t + 1]) done so far
    while scored < len(ids) - 1:
        window = ids[start : start + block]
        logits, _ = model.model(torch.tensor([window], dtype=torch.long, device=model.device))
        end = start + len(window) - 1  # the window predicts positions start .. end - 1
        rows.append(logits[0, scored - start : end - start])
        scored = end
        start = max(0, scored - block // 2)
    return torch.cat(rows)


def prompt_token_scores(
    model: LoadedModel, ids: list[int], top_logprobs: int
) -> list[PromptTokenScore]:
    if not ids:
        return []
    text = model.tokenizer.token_text
    scores = [PromptTokenScore(ids[0], text(ids[0]), None, [])]
    if len(ids) == 1:
        return scores
    logprobs = prompt_logits(model, ids).float().log_softmax(dim=-1)
    logprobs = logprobs.nan_to_num(LOGPROB_FLOOR, 0, LOGPROB_FLOOR).clamp_(min=LOGPROB_FLOOR)
    chosen = logprobs.gather(1, torch.tensor(ids[1:], device=logprobs.device)[:, None])[:, 0]
    tops_values: list[list[float]] = [[] for _ in ids[1:]]
    tops_ids: list[list[int]] = [[] for _ in ids[1:]]
    if top_logprobs:
        top = logprobs.topk(min(top_logprobs, model.vocab_size), dim=-1)
        tops_values, tops_ids = top.values.tolist(), top.indices.tolist()
    for token_id, logprob, values, alternatives in zip(
        ids[1:], chosen.tolist(), tops_values, tops_ids, strict=True
    ):
        top_list = [(text(i), v) for i, v in zip(alternatives, values, strict=True)]
        scores.append(PromptTokenScore(token_id, text(token_id), logprob, top_list))
    return scores


def next_token_logits(model: LoadedModel, context_ids: list[int]) -> torch.Tensor:
    if model.kind == "bigram":
        return model.model.token_vectors()[context_ids[-1]]
    window = context_ids[-model.model.block_size :]
    logits, _ = model.model(torch.tensor([window], dtype=torch.long, device=model.device))
    return logits[0, -1]


def next_token_distribution(
    model: LoadedModel, context_ids: list[int], temperature: float, top_k: int | None
) -> tuple[list[TokenProbability], float]:
    # float64 so the listed probabilities sum to 1 well within 1e-5 even over many tokens.
    logprobs = F.log_softmax(next_token_logits(model, context_ids).double() / temperature, dim=-1)
    probs = logprobs.exp()
    entropy = float(torch.special.entr(probs).sum())
    order = torch.sort(probs, descending=True, stable=True).indices[:top_k].tolist()
    probs_list, logprobs_list = probs.tolist(), logprobs.tolist()
    empirical = None
    if model.empirical is not None:
        empirical = model.empirical[context_ids[-1]].tolist()
    distribution = [
        TokenProbability(
            token=model.tokenizer.token_text(i),
            id=i,
            prob=probs_list[i],
            logprob=logprobs_list[i],
            empirical_prob=None if empirical is None else empirical[i],
        )
        for i in order
    ]
    return distribution, entropy


def nearest_tokens(
    model: LoadedModel, positive: list[int], negative: list[int], metric: str, k: int
) -> list[Neighbour]:
    """Rank every token against the query; the query's own tokens are never listed."""
    unit = model.unit_vectors
    if metric == "cosine":
        # gensim's most_similar: the mean of +unit(positive) and -unit(negative), normalised;
        # a single token is its one-element case.
        query = torch.cat([unit[positive], -unit[negative]]).mean(dim=0)
        if not query.any():
            raise InvalidRequestError(
                "the positive and negative tokens cancel out: their query vector is zero",
                param="negative",
            )
        scores = unit @ F.normalize(query, dim=0)
    else:
        vectors = model.model.token_vectors()
        target = vectors[positive[0]]
        # Euclidean distances are negated so that, as for the others, larger is nearer.
        scores = vectors @ target if metric == "dot" else -(vectors - target).norm(dim=1)
    scores = scores.float().clone()
    scores[positive + negative] = float("-inf")
    count = min(k, model.vocab_size - len(set(positive + negative)))
    top = torch.topk(scores, count)
    sign = -1.0 if metric == "euclidean" else 1.0
    return [
        Neighbour(token=model.tokenizer.token_text(i), id=i, score=sign * score)
        for score, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]
