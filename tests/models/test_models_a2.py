"""A2 specifics: both late-fusion variants, held-out-only w1 search, checkpoint mapping, modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _logp(rng, y, n_classes, informative):
    """Log-probs that favour the true class when informative, else noise."""
    x = rng.normal(size=(len(y), n_classes))
    if informative:
        x[np.arange(len(y)), y] += 3.0
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def test_fit_fusion_weight_uses_only_the_heldout_data():
    from emoflow.models.archs.a2.model import fit_fusion_weight

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    # held-out part: speech informative, text noise -> w1 high
    held = fit_fusion_weight(_logp(rng, y, 4, True), _logp(rng, y, 4, False), y)
    assert held["w1"] >= 0.7 and held["n"] == 200
    # a "test" set with the opposite pattern would pull w1 down; it is never seen by the fit above,
    # and fitting on it alone gives the opposite choice
    other = fit_fusion_weight(_logp(rng, y, 4, False), _logp(rng, y, 4, True), y)
    assert other["w1"] <= 0.3
    # the result is a function of the arrays given, nothing else
    a, t = _logp(rng, y, 4, True), _logp(rng, y, 4, False)
    assert fit_fusion_weight(a, t, y) == fit_fusion_weight(a.copy(), t.copy(), y.copy())
    grid = [0.0, 0.25, 0.5]
    r = fit_fusion_weight(a, t, y, grid=grid)
    assert set(r["scores"]) == set(grid) and r["w1"] == 0.5
    # z-norm statistics are those of the held-out arrays
    np.testing.assert_allclose(r["znorm"]["mu_a"], a.mean(0))
    np.testing.assert_allclose(r["znorm"]["sd_t"], t.std(0) + 1e-6)
    assert 0 <= r["znorm_score"] <= 1


def test_fit_fusion_weight_bad_input():
    from emoflow.models.archs.a2.model import fit_fusion_weight

    with pytest.raises(ValueError, match="shapes"):
        fit_fusion_weight(np.zeros((4, 3)), np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="grid"):
        fit_fusion_weight(np.zeros((4, 3)), np.zeros((4, 3)), np.zeros(4), grid=[1.5])


def test_both_fusion_variants_in_the_model(tiny, mh):
    model = tiny("a2")
    batch = mh.make_batch(model)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 50)
    fit = model.fit_fusion(_logp(rng, y, 4, True), _logp(rng, y, 4, False), y)
    assert model.fusion_w1.item() == pytest.approx(fit["w1"])
    with torch.no_grad():
        out = model(batch)
    lp_a = torch.log_softmax(out["audio_logits"], 1)
    lp_t = torch.log_softmax(out["text_logits"], 1)
    w1 = fit["w1"]
    torch.testing.assert_close(out["logits_weighted"], w1 * lp_a + (1 - w1) * lp_t)
    z = fit["znorm"]
    t = lambda k: torch.tensor(z[k], dtype=torch.float32)  # noqa: E731
    torch.testing.assert_close(out["logits_znorm"], 0.5 * (lp_a - t("mu_a")) / t("sd_a") + 0.5 * (lp_t - t("mu_t")) / t("sd_t"))
    assert torch.equal(out["logits"], out["logits_weighted"])  # preset fusion: weighted
    model.fusion = "znorm"
    try:
        with torch.no_grad():
            assert torch.equal(model(batch)["logits"], out["logits_znorm"])
    finally:
        model.fusion = "weighted"
    # unimodal modes give that branch's log-probabilities
    with torch.no_grad():
        torch.testing.assert_close(model(batch, mode="audio")["logits"], lp_a)
        torch.testing.assert_close(model(batch, mode="text")["logits"], lp_t)


def test_fusion_parameters_are_saved(tiny, mh, tmp_path):
    from emoflow.models import load_model, save_model

    model = tiny("a2")
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 40)
    model.fit_fusion(_logp(rng, y, 4, False), _logp(rng, y, 4, True), y)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.fusion_w1.item() == model.fusion_w1.item()
    assert torch.equal(loaded.z_mu_t, model.z_mu_t)


def test_linear_probe_and_finetune_groups(mh):
    from emoflow.models import build_model, build_optimizers, load_preset

    preset = load_preset("a2", "tiny")
    preset["model"]["speech"]["mode"] = "linear_probe"
    preset["train"]["param_groups"]["speech"]["lr_by_mode"]["linear_probe"] = 0.1
    probe = build_model("a2", preset, mh.LABELS)
    assert not any(p.requires_grad for p in probe.speech.parameters())
    groups = {g["name"]: g for g in probe.param_groups()}
    assert groups["speech"]["lr"] == 0.1 and groups["speech"]["optimizer"] == "sgd"
    assert {id(p) for p in groups["speech"]["params"]} == {id(p) for p in probe.speech_head.parameters()}
    probe.train()
    assert not probe.speech.training and probe.speech_head.training  # frozen BatchNorm stays in eval
    fine = mh.build_tiny("a2")
    groups = {g["name"]: g for g in fine.param_groups()}
    assert groups["speech"]["lr"] == 1e-2 and groups["text"]["optimizer"] == "adam" and groups["text"]["lr"] == 1e-3
    kinds = sorted(type(o).__name__ for o in build_optimizers(fine))
    assert kinds == ["Adam", "SGD"]
    sgd = next(o for o in build_optimizers(fine) if isinstance(o, torch.optim.SGD))
    assert sgd.param_groups[0]["momentum"] == 0.9


def test_compute_loss_trains_branches_separately(tiny, mh):
    import torch.nn.functional as F

    model = tiny("a2")
    batch = mh.make_batch(model)
    out = model(batch)
    y = batch["labels"]
    torch.testing.assert_close(model.compute_loss(out, y), F.cross_entropy(out["audio_logits"], y) + F.cross_entropy(out["text_logits"], y))


def test_speaker_checkpoint_mapping(tmp_path, mh):
    from emoflow.models.archs.a2.model import SpeakerResNet, load_speaker_checkpoint

    model = mh.build_tiny("a2")
    sp = model.preset["model"]["speech"]
    torch.manual_seed(5)
    donor = SpeakerResNet(model.preset["features"]["logmel"]["n_mels"], sp["base_channels"], tuple(sp["blocks"]), sp["embed_dim"])
    # a WeSpeaker-like checkpoint: ReLU (no PReLU slopes), wrapped and prefixed, with a margin head
    state = {f"module.front.{k}": v for k, v in donor.state_dict().items() if ".act" not in k and not k.startswith("act")}
    state["module.projection.weight"] = torch.randn(10, sp["embed_dim"])
    torch.save({"model": state}, tmp_path / "spk.pt")
    report = load_speaker_checkpoint(model, tmp_path / "spk.pt")
    assert torch.equal(model.speech.layer3[0].conv1.weight, donor.layer3[0].conv1.weight)
    assert torch.equal(model.speech.seg_1.weight, donor.seg_1.weight)
    assert torch.equal(model.speech.layer2[0].shortcut[1].running_mean, donor.layer2[0].shortcut[1].running_mean)
    assert report["ignored"] == ["module.projection.weight"]
    assert report["missing"] and all(".act" in k or k.startswith("speech.act") for k in report["missing"])
    bad = {"conv1.weight": torch.zeros(3, 1, 3, 3)}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="conv1.weight"):
        load_speaker_checkpoint(model, tmp_path / "bad.pt")
