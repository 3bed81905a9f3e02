"""Kaldi-style log mel filterbank ("fbank") in torch: the front-end speaker-recognition toolkits
train on, computed inside a model on a padded batch of waveforms.

What Kaldi's ``compute-fbank-feats`` does, and WeSpeaker's VoxCeleb recipes use (facts we rely
on, from wenet-e2e/wespeaker ``wespeaker/dataset/processor.py`` ``compute_fbank`` / ``apply_cmvn``
and ``examples/voxceleb/v2/conf/resnet.yaml``): the waveform scaled to 16-bit integer range
(x 32768), frames of 25 ms every 10 ms with no frame centred beyond the ends ("snip edges":
``1 + (n - 400) // 160`` frames at 16 kHz), each frame's mean removed, pre-emphasis 0.97, a
Hamming window (Kaldi's default is "povey"), zero-padded to the next power of two, power
spectrum, triangular filters equally spaced on the HTK mel scale ``1127 ln(1 + f / 700)`` from
20 Hz to Nyquist, natural log floored at float32 epsilon, no energy coefficient, then cepstral
mean normalisation per utterance (mean only). Dither (1.0 in WeSpeaker's training) is left out:
features are deterministic here.

``KaldiFbank(n_mels=80)(wave [B, S], wave_mask [B, S])`` -> (feats [B, T, n_mels], mask [B, T]).
"""

from __future__ import annotations

import math

import torch
from torch import nn

WINDOWS = ("hamming", "povey", "hanning")
NORMALIZE = ("mean", "meanvar", "none")


def _mel(f: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(f / 700.0)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, low_freq: float, high_freq: float) -> torch.Tensor:
    """Triangular filters [n_mels, n_fft // 2 + 1] on the HTK mel scale (Kaldi's MelBanks; the
    Nyquist bin gets no weight)."""
    nyquist = sample_rate / 2
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0 <= low_freq < high <= nyquist:
        raise ValueError(f"fbank: need 0 <= low_freq < high_freq <= {nyquist}, got {low_freq}, {high}")
    mel_low, mel_high = _mel(torch.tensor(float(low_freq))), _mel(torch.tensor(float(high)))
    delta = (mel_high - mel_low) / (n_mels + 1)
    left = mel_low + delta * torch.arange(n_mels, dtype=torch.float64).unsqueeze(1)
    center, right = left + delta, left + 2 * delta
    bins = _mel(torch.arange(n_fft // 2, dtype=torch.float64) * (sample_rate / n_fft)).unsqueeze(0)
    up = (bins - left) / (center - left)
    down = (right - bins) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1)).float()


def frame_window(kind: str, length: int) -> torch.Tensor:
    n = torch.arange(length, dtype=torch.float64)
    cos = torch.cos(2 * math.pi * n / (length - 1))
    if kind == "hamming":
        w = 0.54 - 0.46 * cos
    elif kind == "hanning":
        w = 0.5 - 0.5 * cos
    elif kind == "povey":
        w = (0.5 - 0.5 * cos) ** 0.85
    else:
        raise ValueError(f"fbank window must be one of {WINDOWS}, got {kind!r}")
    return w.float()


class KaldiFbank(nn.Module):
    """Kaldi-style log mel filterbank of a padded waveform batch (see the module doc).

    No parameters; the window and filters are non-persistent buffers (nothing in a state dict).
    ``normalize``: "mean" (CMN, WeSpeaker), "meanvar" (mean and variance per utterance), "none".
    """

    def __init__(self, n_mels: int = 80, sample_rate: int = 16000, frame_ms: float = 25.0, shift_ms: float = 10.0,
                 window: str = "hamming", preemphasis: float = 0.97, low_freq: float = 20.0, high_freq: float = 0.0,
                 scale: float = 32768.0, normalize: str = "mean"):
        super().__init__()
        if normalize not in NORMALIZE:
            raise ValueError(f"fbank normalize must be one of {NORMALIZE}, got {normalize!r}")
        if n_mels < 1 or frame_ms <= 0 or shift_ms <= 0:
            raise ValueError(f"fbank: invalid n_mels={n_mels}, frame_ms={frame_ms}, shift_ms={shift_ms}")
        self.n_mels, self.sample_rate, self.normalize = int(n_mels), int(sample_rate), normalize
        self.frame_length = int(round(sample_rate * frame_ms / 1000))
        self.frame_shift = int(round(sample_rate * shift_ms / 1000))
        self.n_fft = 1 << (self.frame_length - 1).bit_length()
        self.preemphasis, self.scale = float(preemphasis), float(scale)
        self.register_buffer("window", frame_window(window, self.frame_length), persistent=False)
        self.register_buffer("banks", kaldi_mel_banks(self.n_mels, self.n_fft, sample_rate, low_freq, high_freq),
                             persistent=False)

    def num_frames(self, n_samples: torch.Tensor) -> torch.Tensor:
        """Frames of each clip ("snip edges"); a clip shorter than one frame gives one (zero-padded)."""
        return torch.clamp((n_samples - self.frame_length) // self.frame_shift + 1, min=1)

    def forward(self, wave: torch.Tensor, wave_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=wave.device.type, enabled=False):  # log energies in float32
            return self._fbank(wave, wave_mask)

    def _fbank(self, wave: torch.Tensor, wave_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if wave.dim() != 2:
            raise ValueError(f"fbank expects waves [B, S], got shape {tuple(wave.shape)}")
        x = wave.float() * self.scale
        if wave_mask is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        else:
            lengths = wave_mask.long().sum(1)
            x = x * wave_mask.to(x.dtype)
        if x.shape[1] < self.frame_length:
            x = torch.nn.functional.pad(x, (0, self.frame_length - x.shape[1]))
        frames = x.unfold(1, self.frame_length, self.frame_shift)  # [B, T, L]
        frames = frames - frames.mean(dim=-1, keepdim=True)
        if self.preemphasis:
            prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
            frames = frames - self.preemphasis * prev
        frames = torch.nn.functional.pad(frames * self.window, (0, self.n_fft - self.frame_length))
        power = torch.fft.rfft(frames, dim=-1).abs().square()
        feats = torch.matmul(power, self.banks.t()).clamp(min=torch.finfo(torch.float32).eps).log()
        n = self.num_frames(lengths)
        mask = torch.arange(feats.shape[1], device=feats.device).unsqueeze(0) < n.unsqueeze(1)
        feats = feats * mask.unsqueeze(-1)
        if self.normalize != "none":
            count = n.clamp(min=1).unsqueeze(1).unsqueeze(2).to(feats.dtype)
            mean = feats.sum(1, keepdim=True) / count
            feats = (feats - mean) * mask.unsqueeze(-1)
            if self.normalize == "meanvar":
                std = (feats.square().sum(1, keepdim=True) / count).sqrt().clamp(min=1e-5)
                feats = feats / std
        return feats, mask
