"""Speaker ResNet checkpoints: WeSpeaker's, and those ``emoflow pretrain-speaker`` writes.

    ckpt = read_speaker_checkpoint("Wespeaker/wespeaker-voxceleb-resnet34")   # or a folder,
    net = SpeakerResNet(ckpt.config)                                          # a file, s3://...
    ckpt.load_into(net)                                                       # strict

Facts of the format we rely on (wenet-e2e/wespeaker at dfa7419: ``wespeaker/models/resnet.py``,
``wespeaker/utils/checkpoint.py``, ``wespeaker/bin/average_model.py``, ``wespeaker/cli/speaker.py``;
HF hub ``Wespeaker/wespeaker-voxceleb-resnet34`` and ``-LM``): a model folder holds
``avg_model.pt``, a bare state dict of the network (keys as in ``emoflow.models.speaker``) plus
the speaker-class head ``projection.weight`` (ArcMargin over the training speakers), averaged
over epochs (so ``num_batches_tracked`` is a float), and ``config.yaml`` (``model_args``:
feat_dim, embed_dim, pooling_func, two_emb_layer; ``dataset_args.fbank_args``: num_mel_bins,
frame_length, frame_shift). The activation is read from the tensors: a checkpoint carrying
PReLU slopes (``*act*.weight``) was trained with PReLU, one without with ReLU.
``save_speaker_checkpoint`` writes the same key layout (``speaker.safetensors``) with
``speaker.json`` (network config and front-end), which ``read_speaker_checkpoint`` reads back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from emoflow.models.speaker import WESPEAKER_FBANK, SpeakerCheckpointError, SpeakerNetConfig, SpeakerResNet

log = logging.getLogger("emoflow.models.speaker")

# the speaker-class head of a checkpoint (WeSpeaker's margin "projection"): never used for emotions
HEAD_PREFIXES = ("projection.",)
# wrappers around the network's keys: DistributedDataParallel, pyannote's WeSpeakerResNet34
WRAPPER_PREFIXES = ("module.", "resnet.")
WEIGHT_FILES = ("speaker.safetensors", "avg_model.pt", "pytorch_model.bin", "model.safetensors", "final_model.pt")
CONFIG_FILE = "speaker.json"
HUB_MIRROR_PREFIX = "hub"  # a hub id's files in the run's asset mirror: <mirror>/hub/<org>/<name>/


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
    from emoflow.storage import StoreKeyError, fetch_prefix_once, read_uri

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
    try:
        return fetch_prefix_once(uri, target)
    except StoreKeyError:
        raise SpeakerCheckpointError(f"speaker checkpoint {uri!r}: no files there") from None


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
