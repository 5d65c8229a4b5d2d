"""The training timeline from a real server process, over HTTP: the tiny models' trainer
recorded theirs."""

from __future__ import annotations

import torch

from models.timeline import read_timeline
from tests.service.tiny_models import BIGRAM_ID, GPT_ID


def get(client, path: str, **params) -> dict:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_timeline_served_is_the_one_the_trainer_recorded(client, server):
    for model_id in (BIGRAM_ID, GPT_ID):
        recorded = read_timeline(server.checkpoints / model_id)
        assert recorded is not None
        body = get(client, f"/v1/models/{model_id}/timeline", tokens="e,a")
        assert [s["step"] for s in body["steps"]] == recorded.steps
        assert [s["val_loss"] for s in body["steps"]] == [
            s.metrics["val_loss"] for s in recorded.snapshots
        ]
        assert body["ids"] == recorded.token_ids.tolist()
        assert [q["token"] for q in body["neighbours"]] == ["e", "a"]
        # The same request again: the same coordinates, to the last bit.
        assert get(client, f"/v1/models/{model_id}/timeline", tokens="e,a") == body


def test_the_bigram_table_goes_from_uniform_to_the_served_one(client):
    body = get(client, f"/v1/models/{BIGRAM_ID}/timeline")
    first = get(client, f"/v1/models/{BIGRAM_ID}/timeline/table", step=0)
    vocab = body["vocab_size"]
    assert torch.allclose(
        torch.tensor(first["probs"]), torch.full((vocab, vocab), 1 / vocab), rtol=1e-7, atol=0
    )
    assert body["checkpoint_step"] == body["steps"][-1]["step"]
    last = get(client, f"/v1/models/{BIGRAM_ID}/timeline/table", step=body["checkpoint_step"])
    served = get(client, f"/v1/models/{BIGRAM_ID}/bigram-table")
    assert torch.allclose(
        torch.tensor(last["probs"], dtype=torch.float64),
        torch.tensor(served["probs"], dtype=torch.float64),
        rtol=1e-6,
        atol=0,
    )


def test_bad_tokens_and_a_timeline_of_no_table_are_clear_400s(client):
    response = client.get(f"/v1/models/{GPT_ID}/timeline", params={"tokens": "e,zzz"})
    assert response.status_code == 400 and "'zzz'" in response.json()["error"]["message"]
    response = client.get(f"/v1/models/{GPT_ID}/timeline/table", params={"step": 0})
    assert response.status_code == 400 and "only a bigram" in response.json()["error"]["message"]
    response = client.get(f"/v1/models/{BIGRAM_ID}/timeline/table", params={"step": -1})
    assert response.status_code == 400 and response.json()["error"]["param"] == "step"
