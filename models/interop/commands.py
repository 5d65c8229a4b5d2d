"""`tinygpt export` and `tinygpt import`: argument parsing, then the format's module.

Each format's module is imported only when its command runs: its library is an optional
extra, and a missing one is a message saying how to install it.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from types import ModuleType

from models.checkpoint import load_checkpoint
from models.interop import INSTALL_HINT, InteropError

FORMATS = ("hf", "gguf", "word2vec")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint for another tool: transformers, llama.cpp/Ollama, gensim",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder to export")
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="hf: a transformers folder (GPT only); gguf: one file for llama.cpp and Ollama "
        "(GPT only); word2vec: the token vectors as text, for gensim (any model)",
    )
    p.add_argument("--out", required=True, help="folder (hf) or file (gguf, word2vec)")
    p.add_argument(
        "--dtype",
        choices=["f32", "f16"],
        default="f32",
        help="gguf only: the matrices' precision (default f32)",
    )
    p.set_defaults(handler=run_export)


def add_import_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import", help="turn a GPT-2 transformers folder into a checkpoint that tinygpt serves"
    )
    p.add_argument("--from-hf", required=True, help="folder with config.json, weights, tokenizer")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.set_defaults(handler=run_import)


def format_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(f"models.interop.{name}")
    except ImportError as err:
        raise InteropError(
            f"this needs the optional interop libraries ({err}): {INSTALL_HINT}"
        ) from err


def run_export(args: argparse.Namespace) -> int:
    if args.format != "gguf" and args.dtype != "f32":
        raise InteropError("--dtype applies to --format gguf only")
    checkpoint = load_checkpoint(args.checkpoint)
    out = Path(args.out)
    if args.format == "hf":
        written = format_module("hf").export_hf(checkpoint, out)
    elif args.format == "gguf":
        written = [format_module("gguf").export_gguf(checkpoint, out, args.dtype)]
    else:
        written = [format_module("word2vec").export_word2vec(checkpoint, out)]
    for path in written:
        print(path)
    return 0


def run_import(args: argparse.Namespace) -> int:
    manifest = format_module("hf").import_hf(Path(args.from_hf), Path(args.out))
    config = manifest["config"]
    print(
        f"{args.out}: gpt, {config['n_layer']} layers, {config['n_embd']} dims, "
        f"context {config['block_size']}, vocabulary {config['vocab_size']} "
        f"({manifest['tokenizer']['kind']})"
    )
    return 0
