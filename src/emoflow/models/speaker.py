"""Speaker-recognition ResNet: the speech network of A2 and of speaker pretraining.

The network follows the VoxCeleb ResNet34 of WeSpeaker, the public speaker-recognition
checkpoints users find (wenet-e2e/wespeaker ``wespeaker/models/resnet.py``): input [B, T, F]
laid out [B, 1, F, T]; stem ``conv1`` (3x3, stride 1, ``m_channels`` = 32) + ``bn1``;
``layer1..4`` of BasicBlocks [3, 4, 6, 3] with 32-64-128-256 channels, stride 2 from layer2 on,
a 1x1 conv + BN ``shortcut`` where the shape changes; temporal statistics pooling ("TSTP": mean
and sqrt(unbiased var + 1e-7) over time of the [C * F'] frame vectors, C major); ``seg_1``
Linear (stats -> embedding, 256 in WeSpeaker). Its state-dict keys are WeSpeaker's
(``conv1.weight``, ``bn1.running_mean``, ``layer2.0.shortcut.0.weight``, ``seg_1.weight`` ...).
WeSpeaker trains it with ReLU on an 80-dim Kaldi fbank with mean normalisation
(``emoflow.audio.fbank``); Padi et al. 2022 use PReLU on 128-d log-mel and a 512-d embedding:
the activation and the front-end are part of the network config (``SpeakerNetConfig``).
Checkpoints are read and written by ``emoflow.models.speaker_checkpoint``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emoflow.audio.masks import lengths_from_mask, time_mask
from emoflow.models.base import EmotionModel, MaskedBatchNorm2d, zero_beyond

T_DIM = 3  # time axis of [B, C, F, T]
ACTIVATIONS = ("relu", "prelu")
# WeSpeaker's front-end for its VoxCeleb ResNets (examples/voxceleb/v2/conf/resnet.yaml fbank_args,
# processor.py compute_fbank/apply_cmvn): 80 bins, 25/10 ms, Hamming window, mean normalisation
WESPEAKER_FBANK = {"kind": "fbank", "n_mels": 80, "frame_ms": 25.0, "shift_ms": 10.0, "window": "hamming",
                   "normalize": "mean"}
FRONTEND_KEYS = {"kind", "n_mels", "frame_ms", "shift_ms", "window", "normalize", "preemphasis", "low_freq",
                 "high_freq", "scale", "sample_rate"}


class SpeakerCheckpointError(ValueError):
    """A speaker checkpoint could not be found, read or matched; the message says which and why."""


@dataclass
class SpeakerNetConfig:
    """The speaker network's shape and how it was (or is to be) trained.

    ``frontend``: None = the features step's log-mel (model input ``logmel``, ``n_mels`` bins);
    a dict ``{kind: fbank, n_mels, ...}`` = a Kaldi fbank computed in the model from the waveform
    (input ``wave``; keys of ``emoflow.audio.fbank.KaldiFbank``)."""

    n_mels: int = 80
    base_channels: int = 32
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    embed_dim: int = 256
    activation: str = "relu"
    frontend: dict | None = field(default_factory=lambda: dict(WESPEAKER_FBANK))

    def __post_init__(self):
        self.blocks = tuple(int(b) for b in self.blocks)
        if self.activation not in ACTIVATIONS:
            raise SpeakerCheckpointError(f"speaker network activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not self.blocks or min(self.blocks) < 1 or self.base_channels < 1 or self.embed_dim < 1:
            raise SpeakerCheckpointError(f"invalid speaker network {self}")
        if self.frontend is not None:
            fe = dict(self.frontend)
            unknown = set(fe) - FRONTEND_KEYS
            if unknown or fe.get("kind") != "fbank":
                raise SpeakerCheckpointError(f"speaker front-end must be {{kind: fbank, ...}} with keys from "
                                             f"{sorted(FRONTEND_KEYS)}; got {self.frontend!r}")
            fe["n_mels"] = int(fe.get("n_mels", self.n_mels))
            if fe["n_mels"] != self.n_mels:
                raise SpeakerCheckpointError(f"front-end has {fe['n_mels']} mel bins but the network expects {self.n_mels}")
            self.frontend = fe

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "SpeakerNetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SpeakerCheckpointError(f"speaker network config: unknown keys {sorted(unknown)}")
        return cls(**data)


def make_frontend(frontend: dict | None) -> nn.Module | None:
    """The in-model Kaldi fbank of a front-end spec (None: features come precomputed)."""
    if frontend is None:
        return None
    from emoflow.audio.fbank import KaldiFbank

    return KaldiFbank(**{k: v for k, v in frontend.items() if k != "kind"})


def _activation(kind: str, channels: int) -> nn.Module:
    return nn.PReLU(channels) if kind == "prelu" else nn.ReLU()


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs), masked BatchNorm, ReLU or PReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int, activation: str = "relu"):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = MaskedBatchNorm2d(planes)
        self.act1 = _activation(activation, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = MaskedBatchNorm2d(planes)
        self.act2 = _activation(activation, planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), MaskedBatchNorm2d(planes))
        else:
            self.shortcut = None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = zero_beyond(x, lengths, T_DIM)
        new = (lengths - 1) // self.stride + 1
        h = self.act1(self.bn1(self.conv1(x), new, T_DIM))
        h = self.bn2(self.conv2(zero_beyond(h, new, T_DIM)), new, T_DIM)
        sc = x if self.shortcut is None else self.shortcut[1](self.shortcut[0](x), new, T_DIM)
        return self.act2(h + sc), new


class SpeakerResNet(nn.Module):
    """Speaker ResNet: [B, T, F] features + mask [B, T] -> [B, embed_dim] embedding (``seg_1``)."""

    def __init__(self, cfg: SpeakerNetConfig):
        super().__init__()
        self.config = cfg
        base = cfg.base_channels
        self.conv1 = nn.Conv2d(1, base, 3, stride=1, padding=1, bias=False)
        self.bn1 = MaskedBatchNorm2d(base)
        self.act1 = _activation(cfg.activation, base)
        planes, in_planes, f = base, base, cfg.n_mels
        for i, n in enumerate(cfg.blocks):
            stride = 1 if i == 0 else 2
            layer = nn.ModuleList()
            for j in range(n):
                layer.append(BasicBlock(in_planes, planes, stride if j == 0 else 1, cfg.activation))
                in_planes = planes
            setattr(self, f"layer{i + 1}", layer)
            if stride == 2:
                f = (f - 1) // 2 + 1
            planes *= 2
        self.n_layers = len(cfg.blocks)
        self.stats_dim = 2 * in_planes * f
        self.seg_1 = nn.Linear(self.stats_dim, cfg.embed_dim)
        self.embed_dim = cfg.embed_dim

    def conv_parameters(self) -> list[nn.Parameter]:
        """The frame-level (convolutional) part: everything but the segment-level ``seg_1``."""
        fc = {id(p) for p in self.seg_1.parameters()}
        return [p for p in self.parameters() if id(p) not in fc]

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = lengths_from_mask(mask, "speaker features mask")
        x = feats.transpose(1, 2).unsqueeze(1)  # [B,1,F,T]
        x = self.act1(self.bn1(self.conv1(zero_beyond(x, lengths, T_DIM)), lengths, T_DIM))
        for i in range(self.n_layers):
            for block in getattr(self, f"layer{i + 1}"):
                x, lengths = block(x, lengths)
        frames = x.flatten(1, 2).transpose(1, 2)  # [B,T',C*F'], channel-major as WeSpeaker's TSTP
        return self.seg_1(statistics_pooling(frames, time_mask(lengths, frames.shape[1])))


def statistics_pooling(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """TSTP over real frames: mean || sqrt(unbiased variance + 1e-7) -> [B, 2D]."""
    m = mask.to(frames.dtype).unsqueeze(-1)
    n = m.sum(1)
    mean = (frames * m).sum(1) / n.clamp(min=1.0)
    var = (((frames - mean.unsqueeze(1)) ** 2) * m).sum(1) / (n - 1).clamp(min=1.0)
    return torch.cat([mean, torch.sqrt(var + 1e-7)], dim=1)


def training_views(feats: torch.Tensor, mask: torch.Tensor, *, chunk_frames=None, copies: int = 0,
                   specaugment=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training inputs of a speech network (Padi et al. 2022, §4.2.1): one T per batch drawn from
    ``chunk_frames`` and a random T-frame window of each segment (tiled when shorter), then the
    batch followed by ``copies`` SpecAugment-ed copies of it -> [B * (1 + copies), T, F].

    Randomness comes from torch's global generator (seeded per epoch by the trainer)."""
    from emoflow.audio.specaugment import SpecAugment, random_chunk

    if chunk_frames:
        lengths = lengths_from_mask(mask, "speaker features mask").tolist()
        t = int(chunk_frames[int(torch.randint(len(chunk_frames), (1,)))])
        feats = torch.stack([random_chunk(feats[i, :n], t) for i, n in enumerate(lengths)])
        mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
    if copies:
        aug = SpecAugment(specaugment or "conservative", seed=int(torch.randint(2**31 - 1, (1,))))
        feats = torch.cat([feats] + [aug(feats.cpu(), mask.cpu()).to(feats.device) for _ in range(copies)])
        mask = mask.repeat(1 + copies, 1)
    return feats, mask


class SpeakerEncoder(nn.Module):
    """Front-end (in-model fbank, or precomputed log-mel) + SpeakerResNet, with the training
    views of ``training_views`` in training mode. ``forward(batch)`` -> [B (x copies), embed]."""

    def __init__(self, cfg: SpeakerNetConfig, *, chunk_frames=None, copies: int = 0, specaugment=None):
        super().__init__()
        self.frontend = make_frontend(cfg.frontend)
        self.net = SpeakerResNet(cfg)
        self.chunk_frames = [int(t) for t in chunk_frames] if chunk_frames else None
        self.copies = int(copies)
        self.specaugment = specaugment

    @property
    def input_key(self) -> str:
        return "logmel" if self.frontend is None else "wave"

    def forward(self, batch: dict) -> torch.Tensor:
        if self.frontend is None:
            feats, mask = batch["logmel"], batch["logmel_mask"]
        else:
            feats, mask = self.frontend(batch["wave"], batch["wave_mask"])
        if self.training and (self.chunk_frames or self.copies):
            feats, mask = training_views(feats, mask, chunk_frames=self.chunk_frames, copies=self.copies,
                                         specaugment=self.specaugment)
        return self.net(feats, mask)


# ---------------------------------------------------------------------------------- pretraining model
class SpeakerClassifier(EmotionModel):
    """Speaker classification (the pretraining task of the speech network): SpeakerEncoder ->
    ``projection`` Linear over the speakers. Trained by the same trainer as the emotion models
    (its "labels" are the speaker ids). Preset: ``model.speech`` = SpeakerNetConfig keys plus
    ``chunk_frames``, ``augment_copies``, ``specaugment``."""

    arch = "speaker"
    modes = ("both", "audio")

    def __init__(self, preset: dict, labels: list[str]):
        super().__init__(preset, labels)
        sp = dict(self.preset.get("model", {}).get("speech") or {})
        views = {k: sp.pop(k, None) for k in ("chunk_frames", "augment_copies", "specaugment")}
        self.config = SpeakerNetConfig.from_dict(sp)
        self.encoder = SpeakerEncoder(self.config, chunk_frames=views["chunk_frames"],
                                      copies=views["augment_copies"] or 0, specaugment=views["specaugment"])
        self.inputs = {self.encoder.input_key}
        self.projection = nn.Linear(self.config.embed_dim, self.num_classes)

    def forward(self, batch: dict, mode: str = "audio") -> dict:
        self.check(batch, mode)
        logits = self.projection(self.encoder(batch))
        return {"logits": logits}

    def compute_loss(self, out: dict, labels: torch.Tensor, class_weight: torch.Tensor | None = None) -> torch.Tensor:
        logits = out["logits"]
        return F.cross_entropy(logits, labels.repeat(logits.shape[0] // labels.shape[0]), weight=class_weight)

    def save(self, out: str | Path, meta: dict | None = None) -> Path:
        from emoflow.models.speaker_checkpoint import save_speaker_checkpoint

        return save_speaker_checkpoint(self.encoder.net, out, head=self.projection,
                                       meta={"speakers": list(self.labels), **(meta or {})})


def preset_network(speech: dict[str, Any], n_mels: int) -> SpeakerNetConfig:
    """The SpeakerNetConfig a preset's ``model.speech`` section declares (A2's keys)."""
    sp = copy.deepcopy(speech)
    frontend = sp.get("frontend", "features")
    return SpeakerNetConfig(
        n_mels=int((frontend or {}).get("n_mels", n_mels)) if isinstance(frontend, dict) else int(n_mels),
        base_channels=int(sp.get("base_channels", 32)), blocks=tuple(sp.get("blocks", (3, 4, 6, 3))),
        embed_dim=int(sp.get("embed_dim", 512)), activation=str(sp.get("activation", "prelu")),
        frontend=frontend if isinstance(frontend, dict) else None)
