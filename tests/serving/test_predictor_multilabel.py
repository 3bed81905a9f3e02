"""A multi-label model (CMU-MOSEI, Makhmudov et al. 2024) is not served as if it were single-label:
the predictor answers one emotion with softmax probabilities, so it refuses to load one, naming why."""

import pytest

from emoflow.models import build_model, load_preset, save_model
from emoflow.serving.predictor import EmotionPredictor


def test_predictor_refuses_a_multilabel_model(tmp_path):
    preset = load_preset("a1", "tiny")
    preset["train"]["task"] = "multilabel"
    save_model(build_model("a1", preset, ["angry", "happy", "sad"]), tmp_path / "run" / "model")
    predictor = EmotionPredictor("emo", str(tmp_path / "run"))
    with pytest.raises(ValueError, match="multilabel .*serves single-label models only"):
        predictor.load()
    assert not predictor.ready
