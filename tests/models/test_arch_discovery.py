"""An architecture is one folder (model.py, presets/, paper.yaml) found by discovery: a toy one in a
temporary folder is listed, built, trained through the trainer, saved and loaded like a built-in."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from importlib.metadata import EntryPoint

import numpy as np
import pytest
import torch

from emoflow.models import registry

TOY_MODEL = '''
import torch
from torch import nn

from emoflow.models import EmotionModel, register
from emoflow.models.base import masked_mean


@register("{name}")
class Toy(EmotionModel):
    inputs = {{"logmel"}}
    modes = ("both", "audio")
    seen_progress: list = []

    def __init__(self, preset, labels):
        super().__init__(preset, labels)
        n_mels = int(self.preset["features"]["logmel"]["n_mels"])
        self.head = nn.Linear(n_mels, self.num_classes)

    def set_progress(self, progress):
        super().set_progress(progress)
        type(self).seen_progress.append(progress)

    def forward(self, batch, mode="both"):
        self.check(batch, mode)
        return {{"logits": self.head(masked_mean(batch["logmel"], batch["logmel_mask"]))}}
'''

TOY_PRESET = """
arch: {name}
name: tiny
inputs: [logmel]
features:
  logmel: {{n_mels: 8}}
model: {{}}
train: {{optimizer: adam, lr: 1.0e-2, batch_size: 4, epochs: 1}}
"""

TOY_PAPER = """
paper: Toy et al. 2099
corpus: nowhere
protocol: none
figures: {ua: 50.0}
note: a toy
reference: Toy et al. 2099, 1 k parameters
"""


def write_arch(root, name="toy", register_as=None, model=True):
    folder = root / name
    (folder / "presets").mkdir(parents=True)
    if model:
        (folder / "model.py").write_text(textwrap.dedent(TOY_MODEL.format(name=register_as or name)))
    (folder / "presets" / "tiny.yaml").write_text(TOY_PRESET.format(name=name))
    (folder / "paper.yaml").write_text(TOY_PAPER)
    return folder


@pytest.fixture
def forget():
    """Names registered by a test are removed again (the registry is process-wide)."""
    names = []
    yield names.append
    for name in names:
        registry._REGISTRY.pop(name, None)
        sys.modules.pop(f"emoflow_arch_{name}", None)
    registry._DISCOVERED.clear()


def items(n=12, n_mels=8):
    from emoflow.training.data import Item, UtteranceDataset

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        mel = rng.normal(size=(int(rng.integers(5, 15)), n_mels)).astype(np.float32) + (i % 2)
        out.append(Item(id=f"u{i}", label=i % 2, text="", dialogue=f"d{i}", logmel=mel))
    return UtteranceDataset(out)


def test_builtin_architectures_are_folders():
    found = registry.discover()
    assert {"a1", "a2", "a3", "a4"} <= set(found)
    for name, arch in found.items():
        assert arch.folder.name == name and (arch.folder / "model.py").is_file()
        assert (name, "paper") in registry.list_presets() and (name, "tiny") in registry.list_presets()
        assert registry.paper_facts(name)["paper"]
        assert registry.get_arch(name).arch == name


def test_toy_architecture_from_a_folder_is_discovered_trained_saved_and_loaded(tmp_path, monkeypatch, forget):
    from emoflow.models import PAPER_FIGURES, build_model, list_archs, list_presets, load_model, load_preset, save_model
    from emoflow.models.registry import REFERENCES, describe_presets
    from emoflow.training.trainer import TrainConfig, fit

    write_arch(tmp_path / "archs")
    monkeypatch.setenv(registry.ARCH_PATH_ENV, str(tmp_path / "archs"))
    forget("toy")
    assert "toy" in list_archs() and ("toy", "tiny") in list_presets()
    assert PAPER_FIGURES["toy"]["figures"] == {"ua": 50.0} and REFERENCES["toy"].startswith("Toy et al.")
    assert "toy" in [r["arch"] for r in describe_presets()]

    preset = load_preset("toy", "tiny")
    model = build_model("toy", preset, ["neg", "pos"])
    before = model.head.weight.detach().clone()
    type(model).seen_progress.clear()
    result = fit(model, items(), items(4), TrainConfig.from_preset(preset), device=torch.device("cpu"), progress=False)
    assert result.epochs_run == 1 and not torch.equal(before, model.head.weight)
    assert type(model).seen_progress[0] == 0.0 and len(type(model).seen_progress) == 3  # 12 items / 4

    loaded = load_model(save_model(model, tmp_path / "saved"))
    assert type(loaded).arch == "toy" and torch.equal(loaded.head.weight, model.head.weight)


def test_entry_point_architecture(tmp_path, monkeypatch, forget):
    pkg = tmp_path / "site" / "toyplugin"
    write_arch(tmp_path / "site", name="toyplugin")
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    ep = EntryPoint(name="toyplugin", value="toyplugin", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    forget("toyplugin")
    registry.discover(refresh=True)
    assert registry.arch_folder("toyplugin").module == "toyplugin.model"
    assert registry.get_arch("toyplugin").arch == "toyplugin"
    sys.modules.pop("toyplugin.model", None)
    sys.modules.pop("toyplugin", None)


def test_bad_architecture_folders_are_named(tmp_path, monkeypatch, forget):
    write_arch(tmp_path / "one", name="a2")  # clashes with the built-in a2
    monkeypatch.setenv(registry.ARCH_PATH_ENV, str(tmp_path / "one"))
    with pytest.raises(ValueError, match="'a2' found twice"):
        registry.discover()
    write_arch(tmp_path / "two", name="mislabelled", register_as="other")
    monkeypatch.setenv(registry.ARCH_PATH_ENV, str(tmp_path / "two"))
    forget("other")
    forget("mislabelled")
    with pytest.raises(KeyError, match="registers no architecture 'mislabelled'"):
        registry.get_arch("mislabelled")
    with pytest.raises(KeyError, match="unknown architecture 'nope'"):
        registry.get_arch("nope")


def test_hooks_are_declared_on_the_base_class():
    from emoflow.models import EmotionModel

    for hook in ("set_progress", "compute_loss", "param_groups", "encoders", "speech_frontend",
                 "fit_fusion", "set_fusion"):
        assert callable(getattr(EmotionModel, hook))
    # late fusion is declared, not probed for: only A2 has it, and the defaults do nothing
    assert EmotionModel.late_fusion is False and registry.get_arch("a2").late_fusion is True
    assert not any(registry.get_arch(a).late_fusion for a in ("a1", "a3", "a4"))
    assert EmotionModel.fit_fusion(None, None, None, None) is None
    training_run = (Path(__file__).resolve().parents[2] / "src/emoflow/training/run.py").read_text()
    assert "hasattr(" not in training_run
    with pytest.raises(TypeError, match="compute_loss must take class_weight"):
        class NoWeights(EmotionModel):  # noqa: F841
            def compute_loss(self, out, labels):
                return out["logits"].sum()
