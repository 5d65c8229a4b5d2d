"""Prepared datasets: a corpus tokenized once into flat token files that training reads.

`tinygpt prepare --data PATH --out DATASET` writes a folder holding `train.bin` and `val.bin`
(the two splits' tokens, little-endian `uint16`, or `uint32` for a vocabulary past 65,536)
and `dataset.json`: format version, tokenizer, counts, the split boundary, the sha256 of the
source text and of each token file. The first 90% of the tokens are the training split, as
`models.data.train_val_split` cuts them.

Preparing streams the corpus in pieces of 8 MiB, so memory stays bounded whatever its size:
one pass learns the vocabulary and hashes the text (the BPE then learns its merges from an
iterator over the training part), a second encodes it, vectorized -- a lookup table over code
points for characters, `encode_batch` on every core for BPE. The folder is written under a
temporary name and renamed into place, so a reader sees a whole dataset or none.

`tinygpt train --data PATH` prepares into a cache folder named by the text's sha256 and the
tokenizer settings, so a second run or a `--resume` reads the tokens without encoding again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from models.checkpoint import _UMASK, atomic_write_json
from models.data import TRAIN_FRACTION, CorpusError, TokenFile, corpus_files, read_corpus
from models.tokenizer import BPETokenizer, CharTokenizer, TextTokenizer, tokenizer_from_dict

FORMAT_VERSION = 1
MANIFEST_FILE = "dataset.json"
# The token files' identities when their hashes last matched (see write_verified).
VERIFIED_FILE = "verified.json"
RACY_SECONDS = 2
SPLIT_FILES = {"train": "train.bin", "val": "val.bin"}
ALL_TOKENS_FILE = "tokens.bin"  # BPE only, while preparing: every token, before the split
HASH_BLOCK = 1 << 24
# Where BPE text is cut into the pieces that `encode_batch` spreads over the cores: before a
# space or newline that follows a non-space. No pre-token of the byte-level BPE spans such a
# point (each is a run of spaces, or an optional space and then non-spaces), so the pieces
# encode to exactly the tokens of the whole text.
PIECE_CHARS = 1 << 16
_BOUNDARY = re.compile(r"(?<=\S)[ \n]")
# Text encoded per `encode_batch` call: its results, a Python list per piece, take some 40
# bytes a token until they are written.
BPE_BATCH_CHARS = 1 << 22


class DatasetError(ValueError):
    """A dataset folder is missing, from another format version, or its files were modified."""


@dataclass
class Dataset:
    """An opened dataset: its token splits, read from disk on demand, and what they were
    made from."""

    path: Path
    manifest: dict[str, Any]
    tokenizer: TextTokenizer
    train: TokenFile
    val: TokenFile

    @property
    def text_sha256(self) -> str:
        return self.manifest["source"]["text_sha256"]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2" if vocab_size <= 1 << 16 else "<u4")


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A bar over the source's bytes, which shows MB/s."""
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, dynamic_ncols=True, disable=not enabled
    )


def code_points(text: str) -> np.ndarray:
    """The code points of `text` as an array: its bytes, when all are ASCII (a flag CPython
    keeps on every string, so the check is free)."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class Background:
    """One job at a time on a second thread: hashing and writing release the GIL, so they run
    on another core while the caller encodes the next piece; one job in flight bounds the
    memory held."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: Future | None = None

    def submit(self, job: Callable[..., object], *args: object) -> None:
        self.wait()
        self.pending = self.pool.submit(job, *args)

    def wait(self) -> None:
        if self.pending is not None:
            self.pending.result()  # raises what the job raised
            self.pending = None

    def close(self) -> None:
        self.wait()
        self.pool.shutdown()


@dataclass
class SourceScan:
    """One streaming pass over the source: what preparing needs before it encodes."""

    files: list[str]
    n_bytes: int
    n_chars: int
    text_sha256: str
    chars: np.ndarray  # the code points the text holds, in order


def scan_source(source: Path, progress: bool) -> SourceScan:
    files = corpus_files(source)
    n_bytes = sum(f.stat().st_size for f in files)
    digest = hashlib.sha256()
    present = np.zeros(0x110000, dtype=bool)
    ascii_seen = b""  # the ASCII characters found so far, as bytes
    n_chars = 0
    hashing = Background()
    with progress_bar(n_bytes, "scan", progress) as bar:
        for text in read_corpus(source):
            encoded = text.encode("utf-8")
            hashing.submit(digest.update, encoded)
            if text.isascii():
                # bytes.translate deleting the characters already seen runs at memory speed;
                # a bincount of every byte is several times slower
                ascii_seen += bytes(set(encoded.translate(None, ascii_seen)))
            else:
                present |= np.bincount(code_points(text), minlength=len(present)) > 0
            n_chars += len(text)
            bar.update(len(encoded))
    hashing.close()
    if n_chars < 2:
        raise CorpusError(f"{source} holds fewer than two characters; nothing to learn from")
    present[list(ascii_seen)] = True
    chars = np.flatnonzero(present)
    return SourceScan([str(f) for f in files], n_bytes, n_chars, digest.hexdigest(), chars)


def text_prefix(source: Path, n_chars: int) -> Iterator[str]:
    """The first `n_chars` characters of the corpus, in pieces."""
    left = n_chars
    for text in read_corpus(source):
        if left <= 0:
            return
        yield text[:left]
        left -= len(text)


def bpe_pieces(chunks: Iterable[str]) -> Iterator[str]:
    """The text re-cut at points where no byte-level BPE pre-token spans (see _BOUNDARY) into
    pieces of about PIECE_CHARS characters; the text that follows a chunk's last such point is
    carried into the next chunk."""
    carry = ""
    for chunk in chunks:
        text, start = carry + chunk, 0
        while True:
            found = _BOUNDARY.search(text, start + PIECE_CHARS)
            if found is None:
                break
            yield text[start : found.start()]
            start = found.start()
        carry = text[start:]
    if carry:
        yield carry


def learn_bpe(source: Path, n_chars: int, vocab_size: int) -> BPETokenizer:
    """Merges learned on the first `n_chars` characters, fed as whole pre-tokens."""
    return BPETokenizer.train(bpe_pieces(text_prefix(source, n_chars)), vocab_size)


@dataclass
class WrittenTokens:
    """A written token file: where, in which type, how many tokens, their sha256."""

    path: Path
    dtype: np.dtype
    count: int
    sha256: str


class TokenWriter:
    """Appends token arrays to a file, hashing them as they go, in the background."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = path, dtype
        self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 -- closed by close()
        self.digest = hashlib.sha256()
        self.count = 0
        self.background = Background()

    def write(self, tokens: np.ndarray) -> None:
        data = np.ascontiguousarray(tokens, dtype=self.dtype)
        self.background.submit(self._write, data)
        self.count += len(data)

    def _write(self, data: np.ndarray) -> None:
        self.file.write(data.data)
        self.digest.update(data.data)

    def close(self) -> WrittenTokens:
        self.background.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return WrittenTokens(self.path, self.dtype, self.count, self.digest.hexdigest())


def encode_chars(
    source: Path, scan: SourceScan, staging: Path, progress: bool
) -> tuple[CharTokenizer, dict[str, WrittenTokens]]:
    """Characters: the vocabulary is the sorted set of the corpus' characters (its code
    points, in order), each piece encoded through a table indexed by code point."""
    present = scan.chars
    tokenizer = CharTokenizer([chr(c) for c in present])
    dtype = token_dtype(len(present))
    table = np.zeros(present[-1] + 1, dtype=dtype)
    table[present] = np.arange(len(present), dtype=dtype)
    # An ASCII vocabulary maps bytes to ids through bytes.translate, twice numpy's indexing.
    ascii_table = bytes(table.tolist() + [0] * (256 - len(table))) if present[-1] < 128 else None
    writers = {name: TokenWriter(staging / file, dtype) for name, file in SPLIT_FILES.items()}
    n_train = int(TRAIN_FRACTION * scan.n_chars)
    with progress_bar(scan.n_bytes, "encode char", progress) as bar:
        for text in read_corpus(source):
            if ascii_table is None:
                tokens = table[code_points(text)]
            else:
                tokens = np.frombuffer(text.encode("ascii").translate(ascii_table), np.uint8)
            cut = max(0, min(len(tokens), n_train - writers["train"].count))
            writers["train"].write(tokens[:cut])
            writers["val"].write(tokens[cut:])
            bar.update(utf8_length(text))
    return tokenizer, {name: writer.close() for name, writer in writers.items()}


def batches_of_pieces(source: Path) -> Iterator[list[str]]:
    """The corpus as BPE pieces, about BPE_BATCH_CHARS of them to a batch."""
    batch: list[str] = []
    size = 0
    for piece in bpe_pieces(read_corpus(source)):
        batch.append(piece)
        size += len(piece)
        if size >= BPE_BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encode_bpe(
    source: Path, tokenizer: BPETokenizer, path: Path, scan: SourceScan, seen: int, progress: bool
) -> tuple[WrittenTokens, int]:
    """Every token of the corpus into `path`, encoded a batch of pieces at a time on every
    core; also returns how many of them start in the first `seen` characters."""
    writer = TokenWriter(path, token_dtype(tokenizer.vocab_size))
    chars, before_seen = 0, 0
    with progress_bar(scan.n_bytes, "encode bpe", progress) as bar:
        for pieces in batches_of_pieces(source):
            # The fast variant computes no offsets: the one piece holding `seen` needs them.
            for piece, encoding in zip(pieces, tokenizer.hf.encode_batch_fast(pieces), strict=True):
                if chars + len(piece) <= seen:
                    before_seen += len(encoding.ids)
                elif chars < seen:
                    offsets = tokenizer.hf.encode(piece).offsets
                    before_seen += sum(start < seen - chars for start, _ in offsets)
                chars += len(piece)
                writer.write(np.asarray(encoding.ids, dtype=writer.dtype))
            bar.update(sum(utf8_length(piece) for piece in pieces))
    return writer.close(), before_seen


def prepare_bpe(
    source: Path, scan: SourceScan, vocab_size: int, staging: Path, progress: bool
) -> tuple[BPETokenizer, dict[str, WrittenTokens], int]:
    """Byte-level BPE that never saw the validation text.

    The split is by tokens, so where validation starts in the text depends on the
    tokenizer. Learn the merges on the first 90% of the characters: a tokenizer compresses
    its own training text best, so the token split then lands at or after that point. Should
    it land earlier, learn again on the text before it, until the validation tokens lie wholly
    in text the merges were not learned from. Returns the tokenizer, the split files' writers
    and the number of characters the merges were learned on.
    """
    seen = int(TRAIN_FRACTION * scan.n_chars)
    while True:
        tokenizer = learn_bpe(source, seen, vocab_size)
        all_tokens, before_seen = encode_bpe(
            source, tokenizer, staging / ALL_TOKENS_FILE, scan, seen, progress
        )
        n_train = int(TRAIN_FRACTION * all_tokens.count)
        if before_seen <= n_train:  # token n_train, the first of val, starts at or after `seen`
            return tokenizer, split_token_file(all_tokens, n_train, staging), seen
        seen = val_start_char(source, tokenizer, n_train)


def val_start_char(source: Path, tokenizer: BPETokenizer, n_train: int) -> int:
    """Character offset in the corpus of token `n_train`."""
    tokens, chars = 0, 0
    for piece in bpe_pieces(read_corpus(source)):
        encoding = tokenizer.hf.encode(piece)
        if tokens + len(encoding.ids) > n_train:
            return chars + encoding.offsets[n_train - tokens][0]
        tokens, chars = tokens + len(encoding.ids), chars + len(piece)
    raise AssertionError("the corpus holds fewer tokens than it did when encoded")


def split_token_file(
    all_tokens: WrittenTokens, n_train: int, staging: Path
) -> dict[str, WrittenTokens]:
    """Copy the tokens from `n_train` on into the val file, then cut the file to the train
    split: only a tenth of the tokens is copied."""
    tokens = TokenFile(all_tokens.path, all_tokens.dtype, all_tokens.count)
    writer = TokenWriter(staging / SPLIT_FILES["val"], all_tokens.dtype)
    for start in range(n_train, len(tokens), HASH_BLOCK):
        writer.write(np.asarray(tokens[start : start + HASH_BLOCK]))
    val = writer.close()
    train_path = staging / SPLIT_FILES["train"]
    os.truncate(all_tokens.path, n_train * all_tokens.dtype.itemsize)
    os.replace(all_tokens.path, train_path)
    with open(train_path, "rb") as f:
        os.fsync(f.fileno())
    train = WrittenTokens(train_path, all_tokens.dtype, n_train, file_sha256(train_path))
    return {"train": train, "val": val}


def prepare_dataset(
    source: str | Path,
    out: str | Path,
    tokenizer: str = "char",
    vocab_size: int | None = None,
    progress: bool = False,
) -> Dataset:
    """Tokenize the corpus at `source` into the dataset folder `out` (replacing one there)."""
    source, out = Path(source), Path(out)
    if tokenizer == "bpe" and vocab_size is None:
        raise ValueError("a BPE dataset needs a vocabulary size")
    scan = scan_source(source, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        learned_on: int | None = None
        if tokenizer == "char":
            tok: TextTokenizer
            tok, files = encode_chars(source, scan, staging, progress)
        elif tokenizer == "bpe":
            assert vocab_size is not None
            tok, files, learned_on = prepare_bpe(source, scan, vocab_size, staging, progress)
        else:
            raise ValueError(f"unknown tokenizer {tokenizer!r}; choose char or bpe")
        if files["val"].count < 2:
            raise CorpusError(f"{source} is too short to hold out a validation split")
        manifest = {
            "format_version": FORMAT_VERSION,
            "tokenizer": tok.to_dict(),
            "vocab_size": tok.vocab_size,
            "dtype": files["train"].dtype.str,
            "source": {
                "path": str(source),
                "files": scan.files,
                "bytes": scan.n_bytes,
                "chars": scan.n_chars,
                "text_sha256": scan.text_sha256,
            },
            # The boundary: tokens [0, train_tokens) train, the rest val. A BPE's merges were
            # learned on the first `bpe_learned_on_chars` characters, all before val.
            "split": {
                "train_fraction": TRAIN_FRACTION,
                "train_tokens": files["train"].count,
                **({"bpe_learned_on_chars": learned_on} if learned_on is not None else {}),
            },
            "files": {
                name: {"file": file.path.name, "tokens": file.count, "sha256": file.sha256}
                for name, file in files.items()
            },
        }
        atomic_write_json(staging / MANIFEST_FILE, manifest)
        # The hashes were taken from the tokens as they were written, by this process alone.
        write_verified(staging, {file.path.name: file.sha256 for file in files.values()})
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp's folder is the owner's alone
        commit_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return open_dataset(out, verify=False)  # just written and hashed


def commit_folder(staging: Path, out: Path) -> None:
    """Rename `staging` to `out`; a dataset already at `out` is replaced."""
    if out.exists():
        if not (out / MANIFEST_FILE).is_file():
            raise DatasetError(f"{out} exists and is not a dataset folder; choose another --out")
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, old / out.name)
        os.replace(staging, out)
        shutil.rmtree(old)
    else:
        os.replace(staging, out)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path: Path) -> dict[str, int]:
    """What changes whenever a file's bytes do: its inode, size, and modification and
    status-change times (st_ctime cannot be set back from user space)."""
    st = path.stat()
    return {
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def write_verified(folder: Path, hashes: dict[str, str]) -> None:
    """Record that the token files `hashes` names had those sha256s as they are now, so that
    opening the dataset again need not read them all (2 GB for a 1 GB corpus) to know.

    A file changed within the timestamp granularity of its last write could keep its times
    (the "racy" case git knows), so `open_dataset` records no file written less than
    RACY_SECONDS before it checked it: that one is hashed again next time. `prepare_dataset`
    records its files at once: it wrote them, in a folder of its own."""
    entries = {}
    for name, sha256 in hashes.items():
        identity = file_identity(folder / name)
        entries[name] = {**identity, "sha256": sha256}
    with contextlib.suppress(OSError):  # a read-only dataset is hashed at every open
        atomic_write_json(folder / VERIFIED_FILE, {"files": entries})


def verified_hashes(folder: Path) -> dict[str, str]:
    """The recorded sha256 of each token file whose identity is still the recorded one."""
    try:
        entries = json.loads((folder / VERIFIED_FILE).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    hashes = {}
    for name, entry in entries.items():
        file = folder / name
        unchanged = isinstance(entry, dict) and file.is_file()
        if unchanged and {**file_identity(file), "sha256": entry.get("sha256")} == entry:
            hashes[name] = entry["sha256"]
    return hashes


def open_dataset(path: str | Path, verify: bool = True) -> Dataset:
    """Open a dataset folder, its splits read on demand. Each token file is checked
    against the size and (with `verify`) the sha256 in the manifest: a truncated or modified
    file is refused with an error naming it. A file unchanged since its last verification
    (see `write_verified`) is not read again."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(
            f"dataset {path}: no {MANIFEST_FILE}; make one with `tinygpt prepare`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"dataset {path}: {MANIFEST_FILE} is unreadable ({err})") from err
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(
            f"dataset {path}: format version {version!r}, this build reads {FORMAT_VERSION}; "
            "prepare it again"
        )
    dtype = np.dtype(manifest["dtype"])
    splits = {}
    known = verified_hashes(path) if verify else {}
    hashed: dict[str, str] = {}
    for name, entry in manifest["files"].items():
        file = path / entry["file"]
        size = file.stat().st_size if file.is_file() else None
        if size != entry["tokens"] * dtype.itemsize:
            raise DatasetError(
                f"dataset {path}: {entry['file']} holds {size} bytes, the manifest says "
                f"{entry['tokens']} tokens of {dtype.itemsize} bytes; prepare it again"
            )
        if verify and known.get(entry["file"]) != entry["sha256"]:
            if file_sha256(file) != entry["sha256"]:
                raise DatasetError(
                    f"dataset {path}: {entry['file']} does not match the sha256 in "
                    f"{MANIFEST_FILE}; the tokens were modified: prepare the dataset again"
                )
            if time.time_ns() - file_identity(file)["mtime_ns"] > RACY_SECONDS * 1e9:
                hashed[entry["file"]] = entry["sha256"]
        splits[name] = TokenFile(file, dtype, entry["tokens"])
    if hashed:
        write_verified(path, {**known, **hashed})
    tokenizer = tokenizer_from_dict(manifest["tokenizer"])
    return Dataset(path, manifest, tokenizer, splits["train"], splits["val"])


def cache_root() -> Path:
    """`$TINYGPT_CACHE`, else tinygpt in the user's cache folder."""
    if os.environ.get("TINYGPT_CACHE"):
        return Path(os.environ["TINYGPT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinygpt"


def source_sha256(source: Path) -> str:
    """sha256 of the corpus text as training reads it (what a checkpoint's data_sha256 is)."""
    digest = hashlib.sha256()
    for text in read_corpus(source):
        digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def cached_dataset(
    source: str | Path, tokenizer: str, vocab_size: int | None, progress: bool = False
) -> Dataset:
    """The dataset of `source` from the cache, prepared into it on a miss. The key is the
    text's sha256 and the tokenizer settings: an edited corpus gets a dataset of its own."""
    source = Path(source)
    key = source_sha256(source)[:32] + f"-{tokenizer}" + (f"{vocab_size}" if vocab_size else "")
    folder = cache_root() / "datasets" / key
    if (folder / MANIFEST_FILE).is_file():
        try:
            return open_dataset(folder)
        except DatasetError:
            pass  # damaged: prepared again below
    return prepare_dataset(source, folder, tokenizer, vocab_size, progress)
