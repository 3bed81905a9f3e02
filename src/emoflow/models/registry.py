"""Architectures found by discovery; presets, paper facts, saving and loading.

An architecture is ONE folder named after it (``[a-z][a-z0-9_]*``)::

    <name>/model.py        the EmotionModel subclass, decorated ``@register("<name>")``
    <name>/presets/*.yaml  its presets (each with ``arch: <name>``)
    <name>/paper.yaml      its paper's facts: paper, corpus, protocol, figures, note, reference

Folders are discovered, in this order (a name found twice is an error):

1. the built-in package ``emoflow.models.archs`` (a1..a4);
2. entry points of group ``emoflow.architectures``: ``<name> = <importable package>`` whose folder
   has the layout above (an installed plugin);
3. the folders listed in ``$EMOFLOW_ARCH_PATH`` (``os.pathsep``-separated), each holding
   architecture folders (a user's own, not installed).

Discovery only lists folders and reads YAML; ``model.py`` is imported on first use
(``get_arch`` / ``build_model``).

    build_model(arch, preset, labels) -> EmotionModel
    load_preset(arch, name) -> dict        (<arch folder>/presets/<name>.yaml)
    list_presets() -> list[(arch, name)]
    paper_facts(arch) -> dict              (<arch folder>/paper.yaml)
    save_model(model, dir) -> dir with model.safetensors, preset.json, labels.json, tokenizer/
    load_model(dir) -> EmotionModel        (offline: encoders rebuilt from the saved configs;
                                            a SeedEnsemble when the preset has train.ensemble > 1)
    param_count(model), describe_presets()
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from emoflow.config import load_yaml
from emoflow.models.ensemble import SeedEnsemble, ensemble_size

ARCHS_DIR = Path(__file__).parent / "archs"
ARCHS_PACKAGE = "emoflow.models.archs"
ENTRY_POINT_GROUP = "emoflow.architectures"
ARCH_PATH_ENV = "EMOFLOW_ARCH_PATH"
ARCH_NAME = re.compile(r"[a-z][a-z0-9_]*")
PAPER_KEYS = ("paper", "corpus", "protocol", "figures", "note")
_REGISTRY: dict[str, type] = {}
ENCODER_KEYS = ("text_encoder", "speech_encoder")


@dataclass(frozen=True)
class ArchFolder:
    """Where one architecture lives: its folder, and the import name of its model.py (None: loaded
    from the file under a private module name)."""

    name: str
    folder: Path
    module: str | None
    origin: str

    @property
    def presets_dir(self) -> Path:
        return self.folder / "presets"


def _arch_folders_in(root: Path, origin: str, package: str | None) -> Iterator[ArchFolder]:
    for child in sorted(root.iterdir()) if root.is_dir() else ():
        if child.is_dir() and (child / "model.py").is_file():
            module = f"{package}.{child.name}.model" if package else None
            yield ArchFolder(child.name, child, module, origin)


def _entry_point_folders() -> Iterator[ArchFolder]:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        spec = importlib.util.find_spec(ep.value)
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"entry point {ENTRY_POINT_GROUP}:{ep.name} = {ep.value!r} is not an importable package")
        yield ArchFolder(ep.name, Path(list(spec.submodule_search_locations)[0]), f"{ep.value}.model",
                         f"entry point {ep.name} = {ep.value}")


_DISCOVERED: dict[str, dict[str, ArchFolder]] = {}


def discover(refresh: bool = False) -> dict[str, ArchFolder]:
    """Every architecture folder: built-in, entry points, then ``$EMOFLOW_ARCH_PATH`` (cached per
    value of the variable; ``refresh`` re-reads entry points)."""
    extra = os.environ.get(ARCH_PATH_ENV, "")
    if refresh or extra not in _DISCOVERED:
        found: dict[str, ArchFolder] = {}
        sources = [_arch_folders_in(ARCHS_DIR, "built-in", ARCHS_PACKAGE), _entry_point_folders()]
        sources += [_arch_folders_in(Path(root), f"${ARCH_PATH_ENV} folder {root}", None)
                    for root in extra.split(os.pathsep) if root]
        for source in sources:
            for arch in source:
                if not ARCH_NAME.fullmatch(arch.name):
                    raise ValueError(f"architecture folder {arch.folder} ({arch.origin}): name must match "
                                     f"{ARCH_NAME.pattern}")
                if arch.name in found and found[arch.name].folder.resolve() != arch.folder.resolve():
                    raise ValueError(f"architecture {arch.name!r} found twice: {found[arch.name].folder} "
                                     f"({found[arch.name].origin}) and {arch.folder} ({arch.origin})")
                found.setdefault(arch.name, arch)
        _DISCOVERED[extra] = found
    return _DISCOVERED[extra]


def arch_folder(arch: str) -> ArchFolder:
    """The discovered folder of an architecture (KeyError naming the known ones)."""
    found = discover()
    if arch not in found:
        raise KeyError(f"unknown architecture {arch!r}; known: {list_archs()}")
    return found[arch]


def register(name: str):
    """Class decorator: register an EmotionModel subclass under an architecture name."""

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"architecture {name!r} already registered by {_REGISTRY[name].__name__}")
        cls.arch = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _import_model(arch: ArchFolder) -> None:
    if arch.module is not None:
        importlib.import_module(arch.module)
        return
    module_name = f"emoflow_arch_{arch.name}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, arch.folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise


def get_arch(arch: str) -> type:
    """The registered class for an architecture name (its model.py imported on first use)."""
    if arch not in _REGISTRY:
        folder = arch_folder(arch)
        _import_model(folder)
        if arch not in _REGISTRY:
            raise KeyError(f"{folder.folder / 'model.py'} registers no architecture {arch!r} "
                           f"(decorate its EmotionModel subclass with @register({arch!r}))")
    return _REGISTRY[arch]


def list_archs() -> list[str]:
    """Every architecture: discovered folders and classes registered in code."""
    return sorted(set(_REGISTRY) | set(discover()))


def build_model(arch: str, preset: dict, labels: list[str]):
    """Build an EmotionModel of a registered architecture from a preset dict and label names."""
    if not isinstance(preset, dict):
        raise TypeError(f"preset must be a dict, got {type(preset).__name__}")
    if preset.get("arch", arch) != arch:
        raise ValueError(f"preset is for arch {preset.get('arch')!r}, not {arch!r}")
    model = get_arch(arch)(preset, list(labels))
    model.freeze_param_groups()  # train.param_groups entries with freeze: true
    return model


def load_preset(arch: str, name: str) -> dict:
    """Read <arch folder>/presets/<name>.yaml (a path to a YAML file also works as name)."""
    if str(name).endswith((".yaml", ".yml")):
        path = Path(name)
    else:
        path = arch_folder(arch).presets_dir / f"{name}.yaml"
    if not path.exists():
        known = [n for a, n in list_presets() if a == arch]
        raise FileNotFoundError(f"no preset {name!r} for arch {arch!r} ({path}); known: {known}")
    preset = load_yaml(path)
    if not isinstance(preset, dict) or preset.get("arch") != arch:
        raise ValueError(f"preset {path} must be a mapping with arch: {arch}")
    return preset


def list_presets() -> list[tuple[str, str]]:
    """All (arch, preset name) pairs of the discovered architecture folders."""
    return sorted((a.name, p.stem) for a in discover().values() for p in a.presets_dir.glob("*.yaml"))


# ------------------------------------------------------------------ paper facts
SOURCE_PAPER = re.compile(r'^paper: ".+?" \([^)]+\)')   # paper: "<quote>" (<where>) [more]
SOURCE_CHOICE = re.compile(r"^choice: \S")                  # choice: <reason>
UNSOURCED = ("arch", "name", "sources")


def is_paper_preset(name: str) -> bool:
    """``paper`` and its variants (``paper-<variant>``): presets that claim to follow the paper."""
    return name == "paper" or name.startswith("paper-")


def _leaf_keys(tree: dict, prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaf_keys(value, path + ".")
        else:
            yield path


def source_problems(preset: dict) -> list[str]:
    """What is wrong with a preset's ``sources`` (dotted key -> ``paper: "<quote>" (<where>)`` or
    ``choice: <reason>``; an entry for a mapping covers every key under it): keys with no entry,
    entries that are neither form, and entries for keys the preset does not have."""
    sources = preset.get("sources") or {}
    if not isinstance(sources, dict):
        return [f"sources must be a mapping of dotted keys, got {type(sources).__name__}"]
    problems = [f"{k}: {v!r} is neither 'paper: \"<quote>\" (<where>)' nor 'choice: <reason>'"
                for k, v in sources.items() if not (isinstance(v, str) and (SOURCE_PAPER.match(v) or SOURCE_CHOICE.match(v)))]
    body = {k: v for k, v in preset.items() if k not in UNSOURCED}
    leaves = list(_leaf_keys(body))
    for leaf in leaves:
        parts = leaf.split(".")
        if not any(".".join(parts[:i]) in sources for i in range(1, len(parts) + 1)):
            problems.append(f"{leaf}: no source (paper quote or choice)")
    for key in sources:
        if not any(leaf == key or leaf.startswith(key + ".") for leaf in leaves):
            problems.append(f"{key}: annotated but not in the preset")
    return problems


def paper_facts(arch: str) -> dict[str, Any]:
    """<arch folder>/paper.yaml: paper, corpus, protocol, figures {metric: percent}, note, and
    reference (shown beside the paper preset's parameter counts). Empty when the folder has none."""
    path = arch_folder(arch).folder / "paper.yaml"
    if not path.exists():
        return {}
    facts = load_yaml(path) or {}
    if not isinstance(facts, dict) or not isinstance(facts.get("figures", {}), dict):
        raise ValueError(f"{path} must be a mapping with figures: {{metric: value}}")
    return facts


class FactsView(Mapping):
    """A live read-only mapping {arch: view(paper facts)} over the discovered architectures that
    have a paper.yaml (so a newly discovered architecture shows up without code changes)."""

    def __init__(self, view: Callable[[dict], Any]):
        self._view = view

    def _archs(self) -> list[str]:
        return [a for a, f in discover().items() if (f.folder / "paper.yaml").exists()]

    def __getitem__(self, arch: str):
        if arch not in self._archs():
            raise KeyError(arch)
        return self._view(paper_facts(arch))

    def __iter__(self):
        return iter(self._archs())

    def __len__(self) -> int:
        return len(self._archs())

    def __repr__(self) -> str:
        return repr(dict(self))


# figures as the papers report them (percent, on their own corpus and protocol)
PAPER_FIGURES = FactsView(lambda f: {k: copy.deepcopy(f.get(k, {} if k == "figures" else "")) for k in PAPER_KEYS})
# published figures next to which the paper presets' counts are shown
REFERENCES = FactsView(lambda f: f.get("reference", ""))


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
    for key, enc in model.encoders().items():
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
        "speech_frontend": None if (front := model.speech_frontend()) is None else param_count(front),
        "reference": REFERENCES.get(arch, "") if name == "paper" else PRESET_ROLES.get(name, ""),
        "note": "4 classes assumed for the output layer",
    }


PRESET_ROLES = {
    "tiny": "CI size, random init",
    "paper-frozen": "the paper's model over frozen pretrained encoders (learned layer mix)",
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
    wa = max([5, *(len(r["arch"]) for r in rows)])
    wp = max([7, *(len(r["preset"]) for r in rows)])
    lines = [f"{'arch':{wa}} {'preset':{wp}} {'params':>12} {'trainable':>12}  encoders"]
    for r in rows:
        enc = ", ".join(f"{k}={v / 1e6:.1f}M" for k, v in r["encoders"].items())
        lines.append(f"{r['arch']:{wa}} {r['preset']:{wp}} {r['params']:>12,} {r['trainable']:>12,}  {enc}")
    return "\n".join(lines)
