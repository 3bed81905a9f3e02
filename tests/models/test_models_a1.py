"""A1 specifics: attention fusion weights and dialogue context."""

from __future__ import annotations

import torch


def test_modality_weights_sum_to_one(tiny, mh):
    model = tiny("a1")
    batch = mh.make_batch(model)
    with torch.no_grad():
        v = model(batch)["modality_weights"]
        assert v.shape == (3, 2)
        torch.testing.assert_close(v.sum(1), torch.ones(3))
        assert ((v > 0) & (v < 1)).all()
        assert model(batch, mode="audio")["modality_weights"].tolist() == [[1.0, 0.0]] * 3
        assert model(batch, mode="text")["modality_weights"].tolist() == [[0.0, 1.0]] * 3


def test_attention_fusion_formula(tiny, mh):
    """v = softmax(w^T tanh(P F)) and M = F v^T feed the classifier."""
    model = tiny("a1")
    batch = mh.make_batch(model)
    cap = {}
    hooks = [
        model.proj_speech.register_forward_hook(lambda m, i, o: cap.update(fs=torch.relu(o))),
        model.proj_text.register_forward_hook(lambda m, i, o: cap.update(ft=torch.relu(o))),
        model.classifier.register_forward_hook(lambda m, i, o: cap.update(M=i[0])),
    ]
    with torch.no_grad():
        out = model(batch)
    for h in hooks:
        h.remove()
    F = torch.stack([cap["fs"], cap["ft"]], dim=2)  # [B, n, 2]
    L = torch.tanh(torch.einsum("ij,bjk->bik", model.P.weight, F))
    v = torch.softmax(torch.einsum("j,bjk->bk", model.w.weight[0], L), dim=1)
    torch.testing.assert_close(v, out["modality_weights"])
    torch.testing.assert_close(cap["M"], torch.einsum("bnk,bk->bn", F, v))


def test_dialogue_context_links_utterances(tiny, mh):
    model = tiny("a1")
    batch = mh.make_batch(model, dialogue=[1, 1, 2])
    with torch.no_grad():
        base = model(batch, mode="text")["logits"]
        changed = dict(batch)
        changed["input_ids"] = batch["input_ids"].clone()
        changed["input_ids"][0, 1] = 4000  # edit utterance 0 of dialogue 1
        after = model(changed, mode="text")["logits"]
        alone = model({k: v for k, v in batch.items() if k != "dialogue"}, mode="text")["logits"]
    assert not torch.allclose(after[1], base[1])  # same dialogue: context changes utterance 1
    torch.testing.assert_close(after[2], base[2])  # other dialogue untouched
    assert not torch.allclose(alone[1], base[1])  # with context != without
    torch.testing.assert_close(alone[2], base[2])  # one-utterance dialogue == no dialogue


def test_masked_batchnorm_ignores_padding_in_training():
    from emoflow.models.base import MaskedBatchNorm2d

    bn = MaskedBatchNorm2d(3).train()
    x = torch.randn(2, 3, 10, 4)
    lengths = torch.tensor([10, 6])
    y = bn(x, lengths, time_dim=2)
    x2 = x.clone()
    x2[1, :, 6:] = 1e3  # garbage in the padding
    bn2 = MaskedBatchNorm2d(3).train()
    y2 = bn2(x2, lengths, time_dim=2)
    torch.testing.assert_close(y[0], y2[0])
    torch.testing.assert_close(y[1, :, :6], y2[1, :, :6])
    torch.testing.assert_close(bn.running_mean, bn2.running_mean)
    real = torch.cat([x[0].reshape(3, -1), x[1, :, :6].reshape(3, -1)], dim=1)
    torch.testing.assert_close(bn.running_mean, 0.1 * real.mean(1))
