"""word2vec export, read by gensim: the same neighbours as the service's cosine ranking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gensim.models import KeyedVectors

from models.checkpoint import load_checkpoint
from models.cli import main
from models.interop.tokens import token_bytes, unescape_token
from models.interop.word2vec import export_word2vec
from tests.models.test_shipped_checkpoints import CHECKPOINTS

pytestmark = pytest.mark.interop


def cosine_neighbours(vectors: torch.Tensor, token: int, k: int) -> list[int]:
    """What service.inspection.nearest_tokens ranks for one token by cosine."""
    unit = F.normalize(vectors.float(), dim=1)
    scores = unit @ unit[token]
    scores[token] = float("-inf")
    return torch.topk(scores, k).indices.tolist()


@pytest.mark.parametrize("name", ["bigram-char", "gpt-char", "gpt-bpe"])
def test_gensim_finds_the_neighbours_we_find(name, tmp_path):
    checkpoint = load_checkpoint(CHECKPOINTS / name)
    tokenizer = checkpoint.tokenizer
    path = export_word2vec(checkpoint, tmp_path / "vectors.txt")
    vectors = KeyedVectors.load_word2vec_format(str(path), binary=False)
    ours = checkpoint.model.token_vectors().detach()
    assert len(vectors) == tokenizer.vocab_size
    # every key names its token, and the vector is ours bit for bit
    ids = {unescape_token(key): i for i, key in enumerate(vectors.index_to_key)}
    assert ids == {token_bytes(tokenizer, i): i for i in range(tokenizer.vocab_size)}
    assert torch.equal(torch.from_numpy(vectors.vectors), ours)
    for text in ("a", " ", "\n", "e", "K"):
        token = tokenizer.encode(text)[0]
        key = vectors.index_to_key[token]
        theirs = [ids[unescape_token(k)] for k, _ in vectors.most_similar(key, topn=8)]
        assert theirs == cosine_neighbours(ours, token, 8), text


def test_cli_writes_the_documented_escapes(tmp_path):
    out = tmp_path / "gpt-char.txt"
    args = ["export", "--checkpoint", str(CHECKPOINTS / "gpt-char"), "--format", "word2vec"]
    assert main([*args, "--out", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "65 128"
    assert [line.split(" ")[0] for line in lines[1:3]] == ["\\n", "\\s"]
    assert all(len(line.split(" ")) == 129 for line in lines[1:])
