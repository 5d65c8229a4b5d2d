"""`tinygpt train | sample | eval | plot | export | import`: the offline commands."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import fields

import torch

from models.checkpoint import CheckpointError, load_checkpoint
from models.config import (
    DEFAULT_BPE_VOCAB,
    MODEL_KINDS,
    TrainConfig,
    TrainingError,
    checked_vocab_size,
)
from models.data import CorpusError, load_corpus, split_named
from models.device import DEVICE_CHOICES, PRECISION_CHOICES, resolve_device
from models.distributed import DistEnv
from models.evaluation import full_pass_loss
from models.interop.commands import add_export_parser, add_import_parser
from models.resume import resumed_config
from models.sampling import SamplingParams, generate, seeded_generator
from models.tokenizer import UnknownCharacterError

USER_ERRORS = (CorpusError, CheckpointError, UnknownCharacterError, ValueError)


def default_of(name: str, kinds: Sequence[str] = MODEL_KINDS) -> str:
    """`(default X)` for setting `name`, or `(default X for bigram, Y for gpt)`."""
    values = {kind: TrainConfig.defaults(kind)[name] for kind in kinds}
    if len(set(values.values())) == 1:
        return f"(default {values[kinds[0]]})"
    return "(default " + ", ".join(f"{v} for {kind}" for kind, v in values.items()) + ")"


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    # Every setting defaults to None here: TrainConfig fills in the model's defaults, and the
    # help shows them.
    p = sub.add_parser("train", help="train a model on a text corpus and write a checkpoint")
    p.add_argument("model", choices=MODEL_KINDS, help="which model to train")
    p.add_argument(
        "--data",
        help="UTF-8 text file, or a folder of .txt files (prepared once into a dataset cache)",
    )
    p.add_argument("--dataset", help="a dataset folder `tinygpt prepare` wrote, instead of --data")
    p.add_argument("--out", required=True, help="checkpoint folder to write (or resume)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--steps", dest="max_steps", type=int, help=default_of("max_steps"))
    p.add_argument("--batch-size", type=int, help=default_of("batch_size"))
    p.add_argument("--block-size", type=int, help=default_of("block_size"))
    p.add_argument(
        "--lr",
        dest="learning_rate",
        type=float,
        help="peak learning rate " + default_of("learning_rate"),
    )
    p.add_argument(
        "--min-lr-ratio",
        type=float,
        help="final learning rate as a fraction of --lr " + default_of("min_lr_ratio"),
    )
    p.add_argument("--warmup-steps", type=int, help=default_of("warmup_steps"))
    p.add_argument("--weight-decay", type=float, help=default_of("weight_decay"))
    p.add_argument("--grad-clip", type=float, help=default_of("grad_clip"))
    p.add_argument("--eval-interval", type=int, help=default_of("eval_interval"))
    p.add_argument("--eval-iters", type=int, help=default_of("eval_iters"))
    p.add_argument(
        "--val-tokens",
        type=int,
        help="the final full pass reads the first N val tokens; 0: all " + default_of("val_tokens"),
    )
    p.add_argument(
        "--patience",
        type=int,
        help="stop after N evaluations without improvement; 0: never " + default_of("patience"),
    )
    p.add_argument(
        "--min-delta",
        type=float,
        help="smallest val improvement that counts " + default_of("min_delta"),
    )
    p.add_argument("--seed", type=int, help=default_of("seed"))
    p.add_argument("--device", choices=DEVICE_CHOICES, help=default_of("device"))
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="bf16: matrix multiplies under bf16 autocast, weights kept in fp32; auto: bf16 on "
        "CUDA and on CPUs with native bf16 (AVX512-BF16), fp32 elsewhere; may change on "
        "--resume, as --device may " + default_of("precision"),
    )
    p.add_argument(
        "--grad-accum-steps",
        type=int,
        metavar="N",
        help="micro-batches of --batch-size sequences per optimizer step, summed over all "
        "processes: under torchrun with P processes each accumulates N/P of them, so the "
        "global batch stays N x --batch-size whatever P is; N must be a multiple of P "
        + default_of("grad_accum_steps"),
    )
    p.add_argument(
        "--tokenizer",
        choices=["char", "bpe"],
        help="char: one token per character of the corpus; bpe: byte-level BPE learned on "
        "the training text " + default_of("tokenizer"),
    )
    p.add_argument(
        "--vocab-size",
        type=int,
        help="bpe only: vocabulary size, the 256 bytes plus learned merges "
        f"(default {DEFAULT_BPE_VOCAB})",
    )
    p.add_argument(
        "--init",
        choices=["zeros", "normal", "empirical"],
        help="bigram only " + default_of("init", ["bigram"]),
    )
    p.add_argument(
        "--laplace",
        type=float,
        help="bigram only: ALPHA pseudo-counts per table cell as a prior (add-ALPHA smoothing) "
        + default_of("laplace", ["bigram"]),
    )
    for name in ("n_layer", "n_head", "n_embd"):
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=int, help="gpt only " + default_of(name, ["gpt"]))
    p.add_argument("--dropout", type=float, help="gpt only " + default_of("dropout", ["gpt"]))
    p.add_argument(
        "--no-bias",
        dest="bias",
        action="store_false",
        default=None,
        help="gpt only: no biases in the linear layers and LayerNorms",
    )
    p.add_argument(
        "--scale-embeddings",
        action="store_true",
        default=None,
        help="gpt only: multiply token embeddings by sqrt(n_embd)",
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also write TensorBoard event files into DIR: each evaluation's numbers, and the "
        "token embeddings for the projector (needs the [interop] extra)",
    )
    p.set_defaults(handler=run_train)


def add_prepare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="tokenize a corpus once into token files that `train --dataset` reads"
    )
    p.add_argument("--data", required=True, help="UTF-8 text file, or a folder of .txt files")
    p.add_argument("--out", required=True, help="dataset folder to write (replacing one there)")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default="char", help="(default char)")
    p.add_argument(
        "--vocab-size", type=int, help=f"bpe only: vocabulary size (default {DEFAULT_BPE_VOCAB})"
    )
    p.set_defaults(handler=run_prepare)


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="print text sampled from a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.set_defaults(handler=run_sample)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="full-pass cross-entropy of a checkpoint on a data split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", choices=["val", "train", "all"], default="val")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.set_defaults(handler=run_eval)


def add_plot_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="redraw a training folder's pictures from its JSONL log")
    p.add_argument("dir", help="the folder a training run wrote (its --out)")
    p.set_defaults(handler=run_plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinygpt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_prepare_parser(sub)
    add_train_parser(sub)
    add_sample_parser(sub)
    add_eval_parser(sub)
    add_plot_parser(sub)
    add_export_parser(sub)
    add_import_parser(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The settings given on the command line; TrainConfig fills in the rest."""
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return TrainConfig(**{"data": None, **given})


def run_train(args: argparse.Namespace) -> int:
    # Imported here: `tinygpt serve` shares this parser and needs neither the trainer nor the
    # matplotlib it draws with.
    from models.train import Trainer

    try:
        if args.resume:
            cfg = resumed_config(args.out, args.device, args.precision)
        else:
            if args.dataset and (args.tokenizer or args.vocab_size):
                raise TrainingError(
                    "a --dataset brings its tokenizer: drop --tokenizer and --vocab-size"
                )
            cfg = config_from_args(args)
        report = Trainer(cfg, resume=args.resume).train()
    except TrainingError as err:
        return fail(str(err))
    except OSError as err:
        return fail(
            f"training stopped: {err.strerror or err} ({err.filename or args.out}); "
            "the last checkpoint written is intact, and --resume continues from it"
        )
    summary = {k: report[k] for k in ("val_loss", "steps", "best_step", "train_seconds")}
    if DistEnv.from_environment().is_main:  # under torchrun, once rather than once per process
        print(json.dumps(summary))
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from models.dataset import prepare_dataset

    try:
        vocab_size = checked_vocab_size(args.tokenizer, args.vocab_size)
    except TrainingError as err:
        return fail(str(err))
    started = time.perf_counter()
    dataset = prepare_dataset(args.data, args.out, args.tokenizer, vocab_size, progress=True)
    seconds = time.perf_counter() - started
    manifest = dataset.manifest
    summary = {
        "dataset": str(dataset.path),
        "tokenizer": dataset.tokenizer.kind,
        "vocab_size": dataset.tokenizer.vocab_size,
        "train_tokens": manifest["files"]["train"]["tokens"],
        "val_tokens": manifest["files"]["val"]["tokens"],
        "seconds": round(seconds, 1),
        "mb_per_second": round(manifest["source"]["bytes"] / 1e6 / seconds, 1),
    }
    print(json.dumps(summary))
    return 0


def run_sample(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint, resolve_device(args.device))
    tokenizer = checkpoint.tokenizer
    prompt_ids = tokenizer.encode(args.prompt) or [tokenizer.start_id]
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    new_ids = generate(
        checkpoint.model, prompt_ids, args.max_new_tokens, params, seeded_generator(args.seed)
    )
    print(args.prompt + tokenizer.decode(new_ids))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint, resolve_device(args.device))
    text = load_corpus(args.data)
    ids = torch.tensor(checkpoint.tokenizer.encode(text), dtype=torch.long)
    data = split_named(ids, args.split)
    window = checkpoint.model.block_size if checkpoint.kind == "gpt" else 256
    loss, tokens = full_pass_loss(checkpoint.model, data, window)
    print(json.dumps({"loss": loss, "tokens": tokens, "split": args.split}))
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from models.plots import draw_training_pictures

    try:
        written = draw_training_pictures(args.dir)
    except FileNotFoundError as err:
        return fail(str(err))
    for path in written:
        print(path)
    return 0


def fail(message: str) -> int:
    print(f"tinygpt: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except USER_ERRORS as err:
        return fail(str(err))


if __name__ == "__main__":
    sys.exit(main())
