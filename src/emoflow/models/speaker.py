"""Speaker-recognition ResNet (the speech network of A2) and its pretrained checkpoints.

The network follows the VoxCeleb ResNet34 of WeSpeaker, the public speaker-recognition
checkpoints users find (wenet-e2e/wespeaker ``wespeaker/models/resnet.py``; HF hub
``Wespeaker/wespeaker-voxceleb-resnet34`` and ``-LM``: ``avg_model.pt`` + ``config.yaml``):
input [B, T, F] laid out [B, 1, F, T]; stem ``conv1`` (3x3, stride 1, ``m_channels`` = 32) +
``bn1``; ``layer1..4`` of BasicBlocks [3, 4, 6, 3] with 32-64-128-256 channels, stride 2 from
layer2 on, a 1x1 conv + BN ``shortcut`` where the shape changes; temporal statistics pooling
("TSTP": mean and sqrt(unbiased var + 1e-7) over time of the [C * F'] frame vectors, C major);
``seg_1`` Linear (stats -> embedding, 256 in WeSpeaker). Its state-dict keys are WeSpeaker's
(``conv1.weight``, ``bn1.running_mean``, ``layer2.0.shortcut.0.weight``, ``seg_1.weight`` ...;
the speaker-class head ``projection.*`` sits beside them). WeSpeaker trains it with ReLU on an
80-dim Kaldi fbank with mean normalisation (``emoflow.audio.fbank``); Padi et al. 2022 use PReLU
on 128-d log-mel and a 512-d embedding. The activation is part of the network config: a
checkpoint carrying PReLU slopes (``*act*.weight``) was trained with PReLU, one without with ReLU.

    ckpt = read_speaker_checkpoint("Wespeaker/wespeaker-voxceleb-resnet34")   # or a folder,
    net = SpeakerResNet(ckpt.config)                                          # a file, s3://...
    ckpt.load_into(net)                                                       # strict

``save_speaker_checkpoint`` writes the same layout (``speaker.safetensors`` + ``speaker.json``
with the network config and front-end), which ``read_speaker_checkpoint`` reads back.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emoflow.audio.masks import lengths_from_mask, time_mask
from emoflow.models.base import EmotionModel, MaskedBatchNorm2d, zero_beyond

log = logging.getLogger("emoflow.models.speaker")

T_DIM = 3  # time axis of [B, C, F, T]
ACTIVATIONS = ("relu", "prelu")
# WeSpeaker's front-end for its VoxCeleb ResNets (examples/voxceleb/v2/conf/resnet.yaml fbank_args,
# processor.py compute_fbank/apply_cmvn): 80 bins, 25/10 ms, Hamming window, mean normalisation
WESPEAKER_FBANK = {"kind": "fbank", "n_mels": 80, "frame_ms": 25.0, "shift_ms": 10.0, "window": "hamming",
                   "normalize": "mean"}
FRONTEND_KEYS = {"kind", "n_mels", "frame_ms", "shift_ms", "window", "normalize", "preemphasis", "low_freq",
                 "high_freq", "scale", "sample_rate"}
# the speaker-class head of a checkpoint (WeSpeaker's margin "projection"): never used for emotions
HEAD_PREFIXES = ("projection.",)
# wrappers around the network's keys: DistributedDataParallel, pyannote's WeSpeakerResNet34
WRAPPER_PREFIXES = ("module.", "resnet.")
WEIGHT_FILES = ("speaker.safetensors", "avg_model.pt", "pytorch_model.bin", "model.safetensors", "final_model.pt")
CONFIG_FILE = "speaker.json"
HUB_MIRROR_PREFIX = "hub"  # a hub id's files in the run's asset mirror: <mirror>/hub/<org>/<name>/


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


# ---------------------------------------------------------------------------------- checkpoints
@dataclass
class SpeakerCheckpoint:
    """A speaker network's weights (WeSpeaker key names), its config and where it came from."""

    source: str
    config: SpeakerNetConfig
    state: dict[str, torch.Tensor]
    ignored: list[str]  # the speaker-class head, never used for emotions

    def load_into(self, net: SpeakerResNet, transfer: str = "all") -> dict:
        """Copy the weights into ``net`` strictly: every key of the network must come from the
        checkpoint and every checkpoint key must belong to it, with equal shapes (errors name the
        keys). ``transfer="conv"`` keeps ``net``'s own, new segment-level layer (``seg_1``):
        the paper replaces the FC layers of the pretrained model with new random ones."""
        if transfer not in ("all", "conv"):
            raise SpeakerCheckpointError(f"transfer must be 'all' or 'conv', got {transfer!r}")
        own = net.state_dict()
        missing = sorted(set(own) - set(self.state))
        unexpected = sorted(set(self.state) - set(own))
        if missing or unexpected:
            raise SpeakerCheckpointError(
                f"{self.source}: checkpoint does not match the speaker network {net.config.to_dict()}: "
                f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
                f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        keep = {k for k in own if transfer == "conv" and k.startswith("seg_1.")}
        bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in self.state.items()
               if k not in keep and tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise SpeakerCheckpointError(f"{self.source}: shapes differ from the speaker network: {bad[:5]}")
        net.load_state_dict({k: (own[k] if k in keep else v) for k, v in self.state.items()}, strict=True)
        return {"source": self.source, "loaded": sorted(set(self.state) - keep), "kept_new": sorted(keep),
                "ignored": list(self.ignored), "config": self.config.to_dict()}


def _hub_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _download_store_source(uri: str) -> Path:
    """A checkpoint file or folder in a store (s3://, file://) copied into the local cache once."""
    from emoflow.config import config_hash, home
    from emoflow.storage import open_store, read_uri

    uri = uri.rstrip("/")
    target = home() / "cache" / "speaker" / config_hash(uri)
    name = uri.rsplit("/", 1)[-1]
    if name.endswith((".pt", ".bin", ".ckpt", ".safetensors", ".pth")):
        path = target / name
        if not path.exists():
            target.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(read_uri(uri))
            tmp.replace(path)
        return path
    if (target / ".complete").exists():
        return target
    store = open_store(uri)
    keys = store.list("")
    if not keys:
        raise SpeakerCheckpointError(f"speaker checkpoint {uri!r}: no files there")
    for key in keys:
        store.get_file(key, target / key)
    (target / ".complete").write_text(uri + "\n")
    return target


def resolve_speaker_source(source: str) -> Path:
    """A local file or folder for a checkpoint source: a path, an ``s3://`` / ``file://`` mirror,
    or a hub id (read from the local hub cache when the hub is offline; else, in a pod, from
    ``<$EMOFLOW_ASSETS_URI>/hub/<hub id>/``, the run's asset mirror)."""
    if not isinstance(source, str) or not source:
        raise SpeakerCheckpointError(f"speaker checkpoint source must be a non-empty string, got {source!r}")
    if source.startswith(("s3://", "file://")):
        return _download_store_source(source)
    path = Path(source).expanduser()
    if path.exists():
        return path
    if source.startswith(("/", "./", "../", "~")) or not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        raise SpeakerCheckpointError(f"speaker checkpoint {source!r}: no such file or folder")
    from huggingface_hub import snapshot_download

    from emoflow.assets import MIRROR_ENV, mirror_uri

    try:
        return Path(snapshot_download(source, allow_patterns=["*.pt", "*.bin", "*.safetensors", "*.yaml", "*.json"],
                                      local_files_only=_hub_offline()))
    except Exception as exc:  # noqa: BLE001  (hub errors: not cached, no network, no such repo)
        mirror = mirror_uri()
        if mirror:  # pods: the asset mirror of the run (pipeline parameter `assets`) holds hub/<id>/
            uri = f"{mirror.rstrip('/')}/{HUB_MIRROR_PREFIX}/{source}"
            try:
                return _download_store_source(uri)
            except Exception as mirror_exc:  # noqa: BLE001
                exc = RuntimeError(f"{exc}; not in the asset mirror either ({uri}: {mirror_exc})")
        hint = ("the hub is offline here (HF_HUB_OFFLINE=1) and it is not in the local hub cache; "
                "download it where the hub is reachable, give a local folder/file or an s3:// mirror, or "
                f"copy it to <${MIRROR_ENV}>/{HUB_MIRROR_PREFIX}/{source}/ (`emoflow mirror {source} <that URI>`)"
                if _hub_offline() else "check the hub id, or give a local folder/file or an s3:// mirror")
        raise SpeakerCheckpointError(f"speaker checkpoint {source!r}: {hint} ({type(exc).__name__}: {exc})") from exc


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise SpeakerCheckpointError(f"cannot read {path} as a torch state dict (weights only): {exc}") from exc
    for key in ("state_dict", "model"):  # trainer / Lightning wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise SpeakerCheckpointError(f"{path}: not a state dict of tensors")
    return state


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def infer_config(state: dict[str, torch.Tensor], where: str, frontend: dict | None = None,
                 n_mels: int | None = None) -> SpeakerNetConfig:
    """The network a WeSpeaker-layout state dict was trained as: channels from ``conv1``, blocks
    from the ``layerN.M`` keys, embedding size from ``seg_1``, mel bins from the pooled size
    (or ``n_mels`` when the checkpoint's config states it), PReLU when slopes are present."""
    for key in ("conv1.weight", "seg_1.weight"):
        if key not in state:
            raise SpeakerCheckpointError(f"{where}: no {key!r}: not a WeSpeaker-layout ResNet "
                                         f"(first keys: {sorted(state)[:6]})")
    base = int(state["conv1.weight"].shape[0])
    blocks = []
    while any(k.startswith(f"layer{len(blocks) + 1}.") for k in state):
        i = len(blocks) + 1
        blocks.append(1 + max(int(m.group(1)) for k in state if (m := re.match(rf"layer{i}\.(\d+)\.", k))))
    if not blocks:
        raise SpeakerCheckpointError(f"{where}: no layer1.* keys: not a ResNet speaker checkpoint")
    embed, stats = (int(s) for s in state["seg_1.weight"].shape)
    channels = base * 2 ** (len(blocks) - 1)
    if stats % (2 * channels):
        raise SpeakerCheckpointError(f"{where}: seg_1 takes {stats} inputs, not 2 x {channels} x F' (TSTP pooling); "
                                     "other pooling layers are not supported")
    pooled_f = stats // (2 * channels)
    if n_mels is None:
        n_mels = pooled_f * 2 ** (len(blocks) - 1)
    activation = "prelu" if any(re.search(r"(^|\.)act\d\.weight$", k) for k in state) else "relu"
    cfg = SpeakerNetConfig(n_mels=int(n_mels), base_channels=base, blocks=tuple(blocks), embed_dim=embed,
                           activation=activation, frontend=frontend)
    if _pooled_bins(cfg) != pooled_f:
        raise SpeakerCheckpointError(f"{where}: {n_mels} mel bins give {_pooled_bins(cfg)} pooled bins, "
                                     f"the checkpoint's seg_1 expects {pooled_f}")
    return cfg


def _pooled_bins(cfg: SpeakerNetConfig) -> int:
    f = cfg.n_mels
    for _ in cfg.blocks[1:]:
        f = (f - 1) // 2 + 1
    return f


def _wespeaker_frontend(config: dict, where: str) -> tuple[dict, int | None]:
    """Front-end and mel bins from a WeSpeaker ``config.yaml`` (dataset_args.fbank_args)."""
    dataset = config.get("dataset_args") or {}
    kind = dataset.get("frontend", "fbank")
    if kind != "fbank":
        raise SpeakerCheckpointError(f"{where}: front-end {kind!r} is not supported (fbank only)")
    model_args = config.get("model_args") or {}
    if model_args.get("two_emb_layer"):
        raise SpeakerCheckpointError(f"{where}: two_emb_layer checkpoints are not supported")
    if model_args.get("pooling_func", "TSTP") != "TSTP":
        raise SpeakerCheckpointError(f"{where}: pooling {model_args['pooling_func']!r} is not supported (TSTP only)")
    fb = dataset.get("fbank_args") or {}
    fe = dict(WESPEAKER_FBANK)
    fe["n_mels"] = int(fb.get("num_mel_bins", model_args.get("feat_dim", fe["n_mels"])))
    fe["frame_ms"] = float(fb.get("frame_length", fe["frame_ms"]))
    fe["shift_ms"] = float(fb.get("frame_shift", fe["shift_ms"]))
    if dataset.get("resample_rate"):
        fe["sample_rate"] = int(dataset["resample_rate"])
    return fe, int(model_args["feat_dim"]) if "feat_dim" in model_args else fe["n_mels"]


def read_speaker_checkpoint(source: str | Path) -> SpeakerCheckpoint:
    """Read a speaker ResNet checkpoint: a WeSpeaker model folder (``avg_model.pt`` +
    ``config.yaml``), one written by ``save_speaker_checkpoint`` (``speaker.safetensors`` +
    ``speaker.json``), or a bare weights file (.pt/.bin/.safetensors: WeSpeaker's front-end
    assumed); from a path, an s3:// or file:// mirror, or a hub id."""
    from emoflow.config import load_yaml

    source = str(source)
    path = resolve_speaker_source(source)
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        files = [path / f for f in WEIGHT_FILES if (path / f).exists()]
        if not files:
            raise SpeakerCheckpointError(f"speaker checkpoint {source!r}: none of {list(WEIGHT_FILES)} in {path}")
        path = files[0]
    state = _strip_wrappers(_read_weights(path))
    ignored = sorted(k for k in state if k.startswith(HEAD_PREFIXES))
    net_state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    if (folder / CONFIG_FILE).exists():
        meta = json.loads((folder / CONFIG_FILE).read_text())
        cfg = SpeakerNetConfig.from_dict(meta["network"])
        inferred = infer_config(net_state, source, cfg.frontend, cfg.n_mels)
        if dataclasses.replace(inferred, frontend=cfg.frontend) != cfg:
            raise SpeakerCheckpointError(f"{source}: {CONFIG_FILE} says {cfg.to_dict()}, the weights are {inferred.to_dict()}")
    else:
        frontend, n_mels = dict(WESPEAKER_FBANK), None
        if (folder / "config.yaml").exists():
            frontend, n_mels = _wespeaker_frontend(load_yaml(folder / "config.yaml") or {}, source)
        cfg = infer_config(net_state, source, frontend, n_mels)
    log.info("speaker checkpoint %s: %s (ignored: %d head tensors)", source, cfg.to_dict(), len(ignored))
    return SpeakerCheckpoint(source=source, config=cfg, state=net_state, ignored=ignored)


def save_speaker_checkpoint(net: SpeakerResNet, out: str | Path, *, head: nn.Linear | None = None,
                            meta: dict | None = None) -> Path:
    """Write ``speaker.safetensors`` (WeSpeaker key names; the speaker-class head as
    ``projection.*``) and ``speaker.json`` (network config + ``meta``) into folder ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if head is not None:
        state.update({f"projection.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()})
    save_file(state, str(out / "speaker.safetensors"))
    (out / CONFIG_FILE).write_text(json.dumps({"network": net.config.to_dict(), **(meta or {})}, indent=1))
    return out


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
