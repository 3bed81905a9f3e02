"""Our own generator of WeSpeaker-format speaker ResNet checkpoints (random weights).

The layout is WeSpeaker's, as its source states it (wenet-e2e/wespeaker, wespeaker/models/resnet.py
at dfa7419; HF hub Wespeaker/wespeaker-voxceleb-resnet34: avg_model.pt + config.yaml), written out
here key by key, independent of emoflow's network code:
- stem ``conv1`` [m, 1, 3, 3] (no bias) + ``bn1``; ``layer1..4`` of BasicBlocks with
  ``conv1``/``bn1``/``conv2``/``bn2``, planes m * 2**i, stride 2 from layer2, and
  ``shortcut.0`` (1x1 conv) + ``shortcut.1`` (BN) in the first block of layers 2-4;
- ``seg_1`` Linear from TSTP statistics: ``int(feat_dim / 8) * m_channels * 8`` pooled
  values, doubled (mean || std), to ``embed_dim``;
- ``projection.weight`` [speakers, embed_dim]: the ArcMargin speaker head of training;
- ReLU activations (no parameters); averaged checkpoints (wespeaker/bin/average_model.py divides
  every tensor) hold ``num_batches_tracked`` as float.
"""

from __future__ import annotations

from pathlib import Path

import torch

CONFIG_YAML = """\
model: ResNet34
model_args:
  feat_dim: {feat_dim}
  embed_dim: {embed_dim}
  pooling_func: "TSTP"
  two_emb_layer: False
dataset_args:
  resample_rate: 16000
  fbank_args:
    num_mel_bins: {feat_dim}
    frame_shift: 10
    frame_length: 25
    dither: 1.0
projection_args:
  project_type: "arc_margin"
"""


def wespeaker_resnet_state(m_channels=32, blocks=(3, 4, 6, 3), feat_dim=80, embed_dim=256, speakers=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    def bn(prefix, c):
        state[f"{prefix}.weight"] = rand(c)
        state[f"{prefix}.bias"] = rand(c)
        state[f"{prefix}.running_mean"] = rand(c)
        state[f"{prefix}.running_var"] = rand(c).abs() + 0.5
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(1234.0)

    state["conv1.weight"] = rand(m_channels, 1, 3, 3)
    bn("bn1", m_channels)
    in_planes = m_channels
    for i, n in enumerate(blocks):
        planes, stride = m_channels * 2**i, 1 if i == 0 else 2
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            state[f"{p}.conv1.weight"] = rand(planes, in_planes if j == 0 else planes, 3, 3)
            bn(f"{p}.bn1", planes)
            state[f"{p}.conv2.weight"] = rand(planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            if j == 0 and (stride != 1 or in_planes != planes):
                state[f"{p}.shortcut.0.weight"] = rand(planes, in_planes, 1, 1)
                bn(f"{p}.shortcut.1", planes)
        in_planes = planes
    stats = int(feat_dim / 8) * m_channels * 8 * 2
    state["seg_1.weight"] = rand(embed_dim, stats)
    state["seg_1.bias"] = rand(embed_dim)
    state["projection.weight"] = rand(speakers, embed_dim)
    return state


def write_wespeaker_folder(folder: Path, state: dict, feat_dim=80, embed_dim=256) -> Path:
    """A WeSpeaker model folder: avg_model.pt (a bare state dict) + config.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "avg_model.pt")
    (folder / "config.yaml").write_text(CONFIG_YAML.format(feat_dim=feat_dim, embed_dim=embed_dim))
    return folder
