"""The Padi 2022 recipe with its speaker-recognition transfer: end to end for one epoch on the
IEMOCAP fixture, the paper preset loading a WeSpeaker-format ResNet (small, random) instead of
swapping the speech branch for a stand-in; the trained and saved model holds the checkpoint's
first convolution moved by fine-tuning, and its front-end and activation; the predictor serves it."""

from __future__ import annotations


import torch
import yaml

from emoflow import runconfig, steps
from emoflow.models import load_model, load_preset

from models.speaker_checkpoints import wespeaker_resnet_state, write_wespeaker_folder
from recipes.test_recipes import RECIPES, iemocap_fixture


def test_padi2022_recipe_trains_from_a_wespeaker_checkpoint(tmp_path):
    cfg, _ = runconfig.layered(("recipe", runconfig.load(RECIPES / "padi2022_iemocap.yaml")))
    source = iemocap_fixture(tmp_path / "corpus")
    state = wespeaker_resnet_state(m_channels=4, blocks=(1, 1, 1, 1), feat_dim=80, embed_dim=16)
    ckpt = write_wespeaker_folder(tmp_path / "voxceleb_resnet", state, embed_dim=16)
    # the paper preset as it is, at CI size: the speaker checkpoint above, the tiny random text
    # encoder for BERT-base, short chunks for the short fixture clips
    preset = load_preset("a2", cfg["preset"])
    tiny = load_preset("a2", "tiny")
    preset["model"]["text_encoder"] = tiny["model"]["text_encoder"]
    preset["model"]["max_length"] = 32
    preset["model"]["speech"].update(checkpoint=str(ckpt), embed_dim=16, head_hidden=[8], chunk_frames=[20, 25])
    preset["train"].update(batch_size=8)
    path = tmp_path / "a2-paper-ci.yaml"
    path.write_text(yaml.safe_dump(preset))
    store, work = str(tmp_path / "store"), tmp_path / "work"
    work.mkdir()
    steps.ingest(cfg["corpus"], str(source), store, str(work / "ingested.jsonl"), cfg["ingest_options"])
    steps.transcribe(str(work / "ingested.jsonl"), str(work / "transcribed.jsonl"), cfg["transcribe_backend"], store)
    steps.features(str(work / "transcribed.jsonl"), str(work / "features.jsonl"), store, cfg["feature_config"])
    out = work / "train"
    summary = steps.train(str(work / "features.jsonl"), store, "a2", str(path), str(out), epochs=1,
                          fold_scheme=cfg["fold_scheme"], n_folds=cfg["n_folds"], validation=cfg["validation"],
                          validation_share=cfg["validation_share"], seed=cfg["seed"],
                          feature_config=cfg["feature_config"], progress=False)
    assert summary["arch"] == "a2"
    model = load_model(out / "model")
    net = model.speech.net
    assert model.speech.frontend.n_mels == 80 and not any(isinstance(m, torch.nn.PReLU) for m in net.modules())
    assert model.preset["model"]["speech"]["checkpoint_loaded"] == str(ckpt)
    moved = (net.conv1.weight - state["conv1.weight"]).abs().max()
    assert 0 < moved < 0.5  # fine-tuned from the checkpoint at 10^-3, not from a random init
    # served: the predictor feeds the waveform, the model computes the checkpoint's front-end
    import asyncio
    import base64

    from emoflow.corpora import read_manifest
    from emoflow.serving.predictor import EmotionPredictor, ServingConfig
    from emoflow.storage import read_uri

    p = EmotionPredictor("emo", str(out), config=ServingConfig(model_workers=1, prep_threads=1))
    p.load()
    utt = read_manifest(work / "features.jsonl")[0]
    body = {"instances": [{"audio": base64.b64encode(read_uri(utt.audio)).decode(), "text": utt.text}]}
    res = asyncio.run(p.predict(body))["predictions"][0]
    assert res["label"] in model.labels and abs(sum(res["probabilities"].values()) - 1) < 1e-4
