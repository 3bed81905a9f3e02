"""Architecture a1: model.py, presets/, paper.yaml (see emoflow.models.registry)."""
