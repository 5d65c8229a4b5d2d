"""A GPT-2 imported from transformers, served by `tinygpt serve` on every endpoint."""

from __future__ import annotations

import httpx
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.interop.hf import import_hf
from models.sampling import SamplingParams, generate
from tests.integration.conftest import running_server
from tests.models.interop.gpt2 import gpt2_folder
from tests.models.interop.test_word2vec import cosine_neighbours

pytestmark = pytest.mark.interop


def test_tinygpt_serves_an_imported_gpt2(tmp_path):
    reference = gpt2_folder(tmp_path / "gpt2")
    import_hf(tmp_path / "gpt2", tmp_path / "checkpoints" / "gpt2-small")
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "gpt2-small")
    prompt = "ROMEO: I love"
    ids = checkpoint.tokenizer.encode(prompt)
    expected = generate(checkpoint.model, ids, 12, SamplingParams(temperature=0), torch.Generator())
    with torch.no_grad():
        probs = torch.softmax(reference(torch.tensor([ids])).logits[0, -1], dim=-1)
    vectors = reference.transformer.wte.weight.detach()

    with (
        running_server(tmp_path / "checkpoints", tmp_path, "--device", "cpu") as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        models = client.get("/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["gpt2-small"]

        def post(path: str, **body: object) -> dict:
            response = client.post(path, json={"model": "gpt2-small", **body})
            assert response.status_code == 200, response.text
            return response.json()

        assert post("/v1/tokenize", text=prompt)["ids"] == ids
        assert post("/v1/detokenize", ids=ids)["text"] == prompt
        generated = post("/v1/generate", prompt=prompt, max_new_tokens=12, temperature=0)
        assert generated["token_ids"] == expected
        top = post("/v1/next-token", context=prompt, top_k=5)["distribution"]
        assert [d["id"] for d in top] == torch.topk(probs, 5).indices.tolist()
        for entry in top:
            assert entry["prob"] == pytest.approx(probs[entry["id"]].item(), abs=1e-5)
        token = checkpoint.tokenizer.token_text(ids[0])
        neighbours = post("/v1/neighbours", token=token, k=3)["neighbours"]
        assert [n["id"] for n in neighbours] == cosine_neighbours(vectors, ids[0], 3)
        completion = post("/v1/completions", prompt=prompt, max_tokens=4, temperature=0)
        assert completion["choices"][0]["text"] == checkpoint.tokenizer.decode(expected[:4])
