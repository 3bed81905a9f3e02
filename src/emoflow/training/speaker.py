"""Speaker pretraining: the speech network of A2 trained on speaker classification, for users
without a public speaker checkpoint (Padi et al. 2022 §3.2.1: "We first train a ResNet34 model on
large amounts of speaker-labeled audio data").

    emoflow pretrain-speaker --corpus manifest.jsonl --out speaker-resnet34/ [--recipe paper]

The corpus is a manifest (JSON Lines of ``emoflow.corpora.Utterance``, what ``emoflow`` ingest
writes; a folder holding ``manifest.jsonl`` also works) whose ``speaker`` field is the class.
Training goes through the same trainer as the emotion models (``emoflow.training.trainer.fit``):
seeded, with a validation part (``val_fraction`` of each speaker's utterances) for model
selection. The output folder (``speaker.safetensors`` with WeSpeaker key names, ``speaker.json``
with the network and front-end) is what ``model.speech.checkpoint`` of an A2 preset loads;
``--out`` may also be an ``s3://`` / ``file://`` location.

Scale: the trainer holds its dataset in memory (waveforms as float32, about 230 MB per hour of
16 kHz audio), so this pretrains on corpora of tens of hours on one machine; VoxCeleb-scale
pretraining (the paper's "over 7000 speakers", thousands of hours) is WeSpeaker's own recipe,
whose checkpoint ``model.speech.checkpoint`` loads directly.

Recipes (``RECIPES``): "wespeaker", the network and front-end of WeSpeaker's VoxCeleb ResNet34
(80-dim fbank with mean normalisation, ReLU, 256-d embedding, 200-frame chunks; choice: a plain
softmax head instead of its additive-angular-margin head); "paper", Padi et al. 2022's own
(128 mel bins normalised per segment, PReLU, a 512-d embedding, chunks T in {150, 200, 250, 300},
two SpecAugment-ed copies of each segment). ``--preset`` YAML is merged over the recipe.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import random
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from emoflow.corpora import Utterance
from emoflow.models.speaker import WESPEAKER_FBANK, SpeakerClassifier
from emoflow.training.data import load_items
from emoflow.training.trainer import TrainConfig, fit, pick_device, seed_everything

log = logging.getLogger("emoflow.training.speaker")

RECIPES: dict[str, dict] = {
    "wespeaker": {
        "model": {"speech": {"n_mels": 80, "base_channels": 32, "blocks": [3, 4, 6, 3], "embed_dim": 256,
                             "activation": "relu", "frontend": dict(WESPEAKER_FBANK), "chunk_frames": [200]}},
        # WeSpeaker examples/voxceleb/v2/conf/resnet.yaml: SGD, momentum 0.9, weight decay 1e-4,
        # batch 128, lr 0.1 decaying; choice here: a step decay and fewer epochs
        "train": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1.0e-4, "batch_size": 128,
                  "epochs": 30, "scheduler": {"name": "step", "step_size": 10, "gamma": 0.1}, "grad_clip": 5.0},
    },
    "paper": {
        "model": {"speech": {"n_mels": 128, "base_channels": 32, "blocks": [3, 4, 6, 3], "embed_dim": 512,
                             "activation": "prelu",
                             "frontend": {"kind": "fbank", "n_mels": 128, "normalize": "meanvar"},
                             "chunk_frames": [150, 200, 250, 300], "augment_copies": 2,
                             "specaugment": "conservative"}},
        # Padi et al. 2022 §4.2.1: SGD with momentum 0.9, batch 32, lr constant 8 epochs then halved
        # every other epoch; the initial lr of the speaker model is not given (choice: 0.1)
        "train": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "batch_size": 32, "epochs": 20,
                  "scheduler": {"name": "halve_after", "constant_epochs": 8, "every": 2}, "grad_clip": 5.0},
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def speaker_preset(recipe: str = "wespeaker", overrides: dict | None = None) -> dict:
    """A pretraining preset: a recipe of ``RECIPES`` with ``overrides`` merged over it."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown speaker pretraining recipe {recipe!r}; known: {sorted(RECIPES)}")
    preset = _merge(RECIPES[recipe], overrides or {})
    unknown = set(preset) - {"model", "train"}
    if unknown:
        raise ValueError(f"speaker pretraining preset: unknown sections {sorted(unknown)} (model, train)")
    return preset


def split_by_speaker(utterances: Sequence[Utterance], val_fraction: float, seed: int) -> tuple[list, list]:
    """Training and validation utterances: ``val_fraction`` of each speaker's utterances (at least
    one where the speaker has 3 or more) are held out, chosen by ``seed``."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    by_speaker: dict[str, list[Utterance]] = defaultdict(list)
    for u in utterances:
        by_speaker[u.speaker].append(u)
    rng = random.Random(seed)
    train, val = [], []
    for spk in sorted(by_speaker):
        utts = sorted(by_speaker[spk], key=lambda u: u.id)
        rng.shuffle(utts)
        n_val = 0 if not val_fraction or len(utts) < 3 else max(1, int(round(val_fraction * len(utts))))
        val += utts[:n_val]
        train += utts[n_val:]
    return train, val


def read_corpus(corpus: str | Path) -> list[Utterance]:
    """Utterances of a speaker-labelled corpus (a manifest, or a folder with ``manifest.jsonl``),
    relabelled by speaker; utterances without audio are an error naming them."""
    from emoflow.corpora import read_manifest

    path = Path(corpus)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"speaker corpus {corpus!r}: no manifest at {path}")
    utts = read_manifest(path)
    no_audio = [u.id for u in utts if not u.audio]
    if no_audio:
        raise ValueError(f"speaker corpus {corpus!r}: utterances without audio: {no_audio[:5]}")
    if len({u.speaker for u in utts}) < 2:
        raise ValueError(f"speaker corpus {corpus!r}: speaker classification needs at least 2 speakers")
    base = path.parent
    # relative audio paths are relative to the manifest's folder
    return [dataclasses.replace(u, label=u.speaker, audio=u.audio if "://" in u.audio or Path(u.audio).is_absolute()
                                else str(base / u.audio)) for u in utts]


def pretrain_speaker(utterances: Sequence[Utterance], out: str | Path, *, preset: dict | None = None,
                     val_fraction: float = 0.1, seed: int = 0, epochs: int | None = None, device: str = "auto",
                     progress: bool = True) -> dict:
    """Train a SpeakerClassifier on ``utterances`` (label = speaker) and write its checkpoint to
    ``out`` (a folder, or an s3:// / file:// location). Returns a summary (also in speaker.json)."""
    preset = preset or speaker_preset()
    train_utts, val_utts = split_by_speaker(utterances, val_fraction, seed)
    speakers = sorted({u.speaker for u in train_utts})
    missing = sorted({u.speaker for u in val_utts} - set(speakers))
    if missing:
        raise ValueError(f"speakers {missing} have no training utterances")
    seed_everything(seed)
    model = SpeakerClassifier(preset, speakers)
    log.info("speaker pretraining: %d speakers, %d training / %d validation utterances, network %s",
             len(speakers), len(train_utts), len(val_utts), model.config.to_dict())
    train = load_items(train_utts, None, speakers, set(model.inputs), progress=progress)
    val = load_items(val_utts, None, speakers, set(model.inputs), progress=progress) if val_utts else None
    cfg = TrainConfig.from_preset(preset, epochs=epochs, seed=seed)
    result = fit(model, train, val, cfg, device=pick_device(device), progress=progress, name="speaker")
    summary = {"n_speakers": len(speakers), "train_utterances": len(train_utts), "val_utterances": len(val_utts),
               "best_epoch": result.best_epoch, "best_val_ua": result.best_val_ua, "epochs_run": result.epochs_run,
               "history": result.history, "train": preset.get("train")}
    out = str(out)
    if out.startswith(("s3://", "file://")):
        from emoflow.storage import open_store

        with tempfile.TemporaryDirectory() as tmp:
            folder = model.cpu().save(Path(tmp) / "speaker", meta=summary)
            store = open_store(out.rstrip("/"))
            for f in sorted(folder.iterdir()):
                store.put_file(f.name, f)
    else:
        model.cpu().save(out, meta=summary)
    log.info("speaker checkpoint written to %s (best epoch %d, validation accuracy per speaker %s)", out,
             result.best_epoch, "n/a" if result.best_val_ua is None else f"{result.best_val_ua * 100:.1f}")
    return summary


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from emoflow.config import load_yaml

    overrides = load_yaml(args.preset) if args.preset else None
    preset = speaker_preset(args.recipe, overrides)
    summary = pretrain_speaker(read_corpus(args.corpus), args.out, preset=preset, val_fraction=args.val_fraction,
                               seed=args.seed, epochs=args.epochs or None, device=args.device)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1, default=str))
    print(f"speaker checkpoint: {args.out}  (use it as model.speech.checkpoint of an A2 preset)")
    return 0


def add_cli(subparsers) -> None:
    """``emoflow pretrain-speaker``: speaker classification pretraining of A2's speech network."""
    p = subparsers.add_parser(
        "pretrain-speaker", help="pretrain A2's speaker ResNet on a speaker-labelled corpus",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="manifest.jsonl (or a folder holding one); speaker = class")
    p.add_argument("--out", required=True, help="output folder, or an s3:// / file:// location")
    p.add_argument("--recipe", default="wespeaker", choices=sorted(RECIPES))
    p.add_argument("--preset", default=None, metavar="YAML", help="model/train settings merged over the recipe")
    p.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of each speaker's utterances held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_pretrain)
