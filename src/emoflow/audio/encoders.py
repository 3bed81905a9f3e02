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
        from emoflow.models.base import lengths_from_mask, time_mask

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


def load_speech_encoder(spec: dict) -> SpeechEncoder:
    """Build a SpeechEncoder from a spec (see module docstring)."""
    if not isinstance(spec, dict):
        raise EncoderLoadError(f"speech encoder spec must be a dict, got {type(spec).__name__}")
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

