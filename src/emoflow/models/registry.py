"""Architecture registry, presets, saving and loading.

    @register("a1") class A1(EmotionModel): ...
    build_model(arch, preset, labels) -> EmotionModel
    load_preset(arch, name) -> dict        (src/emoflow/models/presets/<arch>/<name>.yaml)
    list_presets() -> list[(arch, name)]
    save_model(model, dir) -> dir with model.safetensors, preset.json, labels.json, tokenizer/
    load_model(dir) -> EmotionModel        (offline: encoders rebuilt from the saved configs;
                                            a SeedEnsemble when the preset has train.ensemble > 1)
    param_count(model), describe_presets()
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import torch
from torch import nn

from emoflow.config import load_yaml
from emoflow.models.ensemble import SeedEnsemble, ensemble_size

PRESET_DIR = Path(__file__).parent / "presets"
_REGISTRY: dict[str, type] = {}
# built-in architectures, imported on first use
_BUILTIN = {"a1": "emoflow.models.a1", "a2": "emoflow.models.a2", "a3": "emoflow.models.a3", "a4": "emoflow.models.a4"}
ENCODER_KEYS = ("text_encoder", "speech_encoder")


def register(name: str):
    """Class decorator: register an EmotionModel subclass under an architecture name."""

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"architecture {name!r} already registered by {_REGISTRY[name].__name__}")
        cls.arch = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_arch(arch: str) -> type:
    """The registered class for an architecture name (imports built-ins on demand)."""
    if arch not in _REGISTRY and arch in _BUILTIN:
        importlib.import_module(_BUILTIN[arch])
    if arch not in _REGISTRY:
        raise KeyError(f"unknown architecture {arch!r}; known: {sorted(set(_REGISTRY) | set(_BUILTIN))}")
    return _REGISTRY[arch]


def list_archs() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def build_model(arch: str, preset: dict, labels: list[str]):
    """Build an EmotionModel of a registered architecture from a preset dict and label names."""
    if not isinstance(preset, dict):
        raise TypeError(f"preset must be a dict, got {type(preset).__name__}")
    if preset.get("arch", arch) != arch:
        raise ValueError(f"preset is for arch {preset.get('arch')!r}, not {arch!r}")
    cls = get_arch(arch)
    return cls(preset, list(labels))


def load_preset(arch: str, name: str) -> dict:
    """Read presets/<arch>/<name>.yaml (a path to a YAML file also works as name)."""
    path = Path(name) if str(name).endswith((".yaml", ".yml")) else PRESET_DIR / arch / f"{name}.yaml"
    if not path.exists():
        known = [n for a, n in list_presets() if a == arch]
        raise FileNotFoundError(f"no preset {name!r} for arch {arch!r} ({path}); known: {known}")
    preset = load_yaml(path)
    if not isinstance(preset, dict) or preset.get("arch") != arch:
        raise ValueError(f"preset {path} must be a mapping with arch: {arch}")
    return preset


def list_presets() -> list[tuple[str, str]]:
    """All (arch, preset name) pairs shipped in presets/."""
    return sorted((p.parent.name, p.stem) for p in PRESET_DIR.glob("*/*.yaml"))


def param_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


# ------------------------------------------------------------------ save / load
def _encoder_specs(preset: dict) -> dict[str, dict]:
    model = preset.get("model", {})
    return {k: model[k] for k in ENCODER_KEYS if isinstance(model.get(k), dict)}


def save_model(model, out_dir: str | Path) -> Path:
    """Write model.safetensors, preset.json, labels.json (+ tokenizer/) into out_dir."""
    from safetensors.torch import save_model as st_save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preset = copy.deepcopy(model.preset)
    # record each encoder's full config so load_model rebuilds it offline with no download
    for key, enc in getattr(model, "encoders", lambda: {})().items():
        spec = preset["model"][key]
        spec["config_dict"] = enc.config.to_dict()
    st_save(model, str(out / "model.safetensors"))
    (out / "preset.json").write_text(json.dumps(preset, indent=2, sort_keys=True, default=str))
    (out / "labels.json").write_text(json.dumps(model.labels))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out / "tokenizer"))
    return out


def load_model(model_dir: str | Path, map_location: str = "cpu"):
    """Rebuild a saved model (random-init encoders from saved configs, then saved weights)."""
    from safetensors.torch import load_model as st_load

    d = Path(model_dir)
    for f in ("model.safetensors", "preset.json", "labels.json"):
        if not (d / f).exists():
            raise FileNotFoundError(f"{d} is not a saved model: {f} missing")
    preset = json.loads((d / "preset.json").read_text())
    labels = json.loads((d / "labels.json").read_text())
    for key, spec in _encoder_specs(preset).items():
        if "config_dict" in spec:
            spec["init"] = "random"
        if key == "text_encoder":
            spec["tokenizer"] = str(d / "tokenizer") if (d / "tokenizer").exists() else False
    n = ensemble_size(preset)
    if n > 1:
        model = SeedEnsemble([build_model(preset["arch"], preset, labels) for _ in range(n)])
    else:
        model = build_model(preset["arch"], preset, labels)
    st_load(model, str(d / "model.safetensors"), strict=True, device=map_location)
    model.eval()
    return model


# ------------------------------------------------------------------ parameter counts
def offline_preset(preset: dict) -> dict:
    """Copy of a preset whose encoders are random-init from their written configs (no download)."""
    p = copy.deepcopy(preset)
    for key, spec in _encoder_specs(p).items():
        spec["init"] = "random"
        if "config_dict" not in spec and spec.get("family"):
            spec["source"] = spec["family"]
        if key == "text_encoder":
            spec["tokenizer"] = False
    return p


# published figures next to which the paper presets' counts are shown
REFERENCES = {
    "a1": "Makhmudov et al. 2024 (MELD / CMU-MOSEI); BERT-base 110 M",
    "a2": "Padi et al. 2022 (IEMOCAP LOSO UA 76.07 / WA 75.76); BERT-base 110 M, ResNet34 ~21.5 M (64-ch)",
    "a3": "Ekong et al. 2023 (IEMOCAP acc 77.58); wav2vec2-base 95 M + BERT-base 110 M",
    "a4": "MSMSER, Wang et al. 2023 (IEMOCAP UA 76.4 / WA 75.2); HuBERT-large 316 M + MPNet 110 M",
}


def count_preset(arch: str, name: str) -> dict:
    """Parameter counts of a preset, built on the meta device (no weights, no download)."""
    preset = offline_preset(load_preset(arch, name))
    with torch.device("meta"):
        model = build_model(arch, preset, ["c0", "c1", "c2", "c3"])
    parts = {k: param_count(m) for k, m in model.encoders().items()}
    total = param_count(model)
    return {
        "arch": arch,
        "preset": name,
        "params": total,
        "trainable": param_count(model, trainable_only=True),
        "encoders": parts,
        "rest": total - sum(parts.values()),  # everything outside the pretrained encoders
        "speech_frontend": param_count(model.speech_frontend()) if hasattr(model, "speech_frontend") else None,
        "reference": REFERENCES.get(arch, "") if name == "paper" else PRESET_ROLES.get(name, ""),
        "note": "4 classes assumed for the output layer",
    }


PRESET_ROLES = {
    "tiny": "CI size, random init",
    "demo": "tiny speech branch + frozen offline MiniLM text encoder",
    "offline": "offline encoders (Whisper / GE2E / MiniLM / MPNet), no hub needed",
    "offline-speech": "speech only, cached offline encoders",
}


def describe_presets() -> list[dict]:
    """Parameter counts for every shipped preset (what `emoflow models presets` prints)."""
    return [count_preset(a, n) for a, n in list_presets()]


def format_presets(rows: list[dict] | None = None) -> str:
    """A plain-text table of describe_presets()."""
    rows = describe_presets() if rows is None else rows
    lines = [f"{'arch':5} {'preset':7} {'params':>12} {'trainable':>12}  encoders"]
    for r in rows:
        enc = ", ".join(f"{k}={v / 1e6:.1f}M" for k, v in r["encoders"].items())
        lines.append(f"{r['arch']:5} {r['preset']:7} {r['params']:>12,} {r['trainable']:>12,}  {enc}")
    return "\n".join(lines)
