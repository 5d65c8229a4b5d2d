"""A model's training timeline (models.timeline) as the playground plays it: the losses at
each recorded step, the token map at each step in one frame, the neighbours of a few tokens
step by step, and, for a bigram, its table at a step.

The file is read once per loaded model, and its projection computed then and kept (a
reloaded checkpoint is a new model, with its own). The responses are bounded by the file,
which holds at most MAX_SNAPSHOTS snapshots of MAX_TOKENS tokens each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.timeline import TIMELINE_FILE, Timeline, TimelineError, read_timeline
from service.exceptions import InvalidRequestError, NotRecordedError
from service.inspection import jensen_shannon_distances
from service.loaded_model import LoadedModel
from service.projections import PerModel, principal_components, token_texts
from service.schemas import (
    Neighbour,
    TimelineFrame,
    TimelineNeighbours,
    TimelineStep,
    TimelineTable,
    TrainingTimeline,
)


@dataclass(frozen=True)
class TimelineView:
    """A timeline and what every request about it shares."""

    timeline: Timeline
    ids: list[int]  # the recorded tokens, in the order of the snapshots' rows
    tokens: list[str]
    rows: dict[int, int]  # token id -> its row
    frames: list[TimelineFrame]  # one per snapshot, oldest first


def aligned_projections(points: list[torch.Tensor]) -> list[tuple[torch.Tensor, list[float]]]:
    """Each snapshot's rows (K, D) on 2 axes, and the share of their variance each holds.

    Every snapshot gets its own PCA, which shows its structure best, in the frame of the
    last one: from the last back, each is turned (or mirrored) onto the one after it by
    orthogonal Procrustes, the rotation R minimising |A R - B|, R = U V^T for A^T B = U S V^T.
    So the points move smoothly from step to step instead of flipping with each PCA's signs."""
    projections = [principal_components(p) for p in points]
    coords = [c for c, _ in projections]  # (K, 2) float64 each
    for t in range(len(coords) - 2, -1, -1):
        u, _, vh = torch.linalg.svd(coords[t].T @ coords[t + 1])
        coords[t] = coords[t] @ (u @ vh)
    return [(c, explained) for c, (_, explained) in zip(coords, projections, strict=True)]


def map_points(timeline: Timeline, vectors: torch.Tensor) -> torch.Tensor:
    """What the map places: a GPT's embedding rows; a bigram's rows of P(next | current) as
    square roots, whose distances are Hellinger distances between the distributions."""
    return vectors.sqrt() if timeline.model == "bigram" else vectors


def check_matches(timeline: Timeline, model: LoadedModel) -> None:
    if timeline.model != model.kind or timeline.vocab_size != model.vocab_size:
        raise TimelineError(
            f"the timeline of model {model.id!r} belongs to a {timeline.model} model of "
            f"{timeline.vocab_size} tokens, not to this {model.kind} of {model.vocab_size}"
        )
    if not timeline.snapshots or timeline.token_ids is None:
        raise TimelineError(f"the timeline of model {model.id!r} holds no snapshot")
    if not all(s.vectors.isfinite().all() for s in timeline.snapshots):
        raise TimelineError("its snapshots hold values that are not finite (a run that diverged)")


def missing_timeline(model: LoadedModel, why: str) -> NotRecordedError:
    return NotRecordedError(
        f"model {model.id!r} has no training timeline: {why}. Timelines are recorded by "
        "`tinygpt train` from this version on; retrain the model to get one",
        param="model_id",
    )


def load_view(model: LoadedModel) -> TimelineView:
    """The timeline in the model's checkpoint folder, projected."""
    try:
        timeline = read_timeline(model.checkpoint.path)
        if timeline is None:
            raise missing_timeline(model, f"its checkpoint folder holds no {TIMELINE_FILE}")
        check_matches(timeline, model)
    except TimelineError as err:
        raise missing_timeline(model, f"its {TIMELINE_FILE} cannot be used ({err})") from None
    assert timeline.token_ids is not None  # check_matches saw to it
    ids = timeline.token_ids.tolist()
    projections = aligned_projections([map_points(timeline, s.vectors) for s in timeline.snapshots])
    frames = [
        TimelineFrame(
            step=snapshot.step,
            explained_variance=explained,
            x=coords[:, 0].tolist(),
            y=coords[:, 1].tolist(),
        )
        for snapshot, (coords, explained) in zip(timeline.snapshots, projections, strict=True)
    ]
    return TimelineView(
        timeline=timeline,
        ids=ids,
        tokens=token_texts(model, ids),
        rows={token_id: row for row, token_id in enumerate(ids)},
        frames=frames,
    )


timeline_view = PerModel(load_view)


def query_rows(model: LoadedModel, view: TimelineView, tokens: list[str]) -> list[int]:
    """The rows of `tokens` in the timeline; a 400 naming every one that is not a token of
    the model, or not among those the timeline recorded."""
    unknown, unrecorded, rows = [], [], []
    for token in tokens:
        try:
            token_id = model.token_id(token, "tokens")
        except InvalidRequestError:
            unknown.append(repr(token))
            continue
        if token_id in view.rows:
            rows.append(view.rows[token_id])
        else:
            unrecorded.append(repr(token))
    problems = []
    if unknown:
        problems.append(
            f"{', '.join(unknown)}, which model {model.id!r} has no single token for (POST "
            "/v1/tokenize shows how text splits into tokens)"
        )
    if unrecorded:
        problems.append(
            f"{', '.join(unrecorded)}, which its timeline did not record (it records the "
            f"{len(view.ids)} most frequent tokens)"
        )
    if problems:
        raise InvalidRequestError("`tokens` lists " + "; and ".join(problems), "tokens")
    return rows


def neighbours_at(view: TimelineView, vectors: torch.Tensor, row: int, k: int) -> list[Neighbour]:
    """The `k` recorded tokens nearest token row `row` in one snapshot, as /v1/neighbours
    ranks by default: a GPT's by the cosine of their embeddings, a bigram's by the
    Jensen-Shannon distance of their next-token distributions (nearest first). Equal scores
    (a bigram's uniform rows at step 0) keep the order of the rows."""
    if view.timeline.model == "bigram":
        # log P as logits: the distance renormalises them, as a slice of the table needs
        scores = -jensen_shannon_distances(vectors.double().log(), row)
        sign = -1.0
    else:
        unit = F.normalize(vectors.double(), dim=1)
        scores, sign = unit @ unit[row], 1.0
    scores[row] = float("-inf")
    order = torch.sort(scores, descending=True, stable=True).indices[: min(k, len(view.ids) - 1)]
    return [
        Neighbour(token=view.tokens[i], id=view.ids[i], score=sign * float(scores[i]))
        for i in order.tolist()
    ]


def training_timeline(model: LoadedModel, tokens: list[str], k: int) -> TrainingTimeline:
    view = timeline_view(model)
    timeline = view.timeline
    rows = query_rows(model, view, tokens)
    steps = [
        TimelineStep(
            step=s.step,
            train_loss=s.metrics["train_loss"],
            val_loss=s.metrics["val_loss"],
            tv_mean=s.metrics.get("tv_mean"),
            tv_weighted=s.metrics.get("tv_weighted"),
            kl=s.metrics.get("kl"),
        )
        for s in timeline.snapshots
    ]
    neighbours = [
        TimelineNeighbours(
            token=view.tokens[row],
            id=view.ids[row],
            steps=[neighbours_at(view, s.vectors, row, k) for s in timeline.snapshots],
        )
        for row in rows
    ]
    return TrainingTimeline(
        model=model.id,
        kind=model.kind,
        vocab_size=model.vocab_size,
        checkpoint_step=model.checkpoint.manifest["metrics"]["step"],
        ids=view.ids,
        tokens=view.tokens,
        steps=steps,
        frames=view.frames,
        neighbours=neighbours,
    )


def timeline_table(model: LoadedModel, step: int) -> TimelineTable:
    """A bigram's recorded table at `step`, and the training split's for the same tokens."""
    view = timeline_view(model)
    steps = [s.step for s in view.timeline.snapshots]
    if step not in steps:
        raise InvalidRequestError(
            f"model {model.id!r}'s timeline has no snapshot at step {step}; its steps are "
            f"{', '.join(map(str, steps))}",
            param="step",
        )
    snapshot = view.timeline.snapshots[steps.index(step)]
    empirical = None
    if model.empirical is not None:
        ids = torch.tensor(view.ids, device=model.empirical.device)
        empirical = model.empirical[ids][:, ids].double().tolist()
    return TimelineTable(
        model=model.id,
        step=step,
        ids=view.ids,
        tokens=view.tokens,
        probs=snapshot.vectors.double().tolist(),
        empirical=empirical,
    )
