"""Architecture a2: model.py, presets/, paper.yaml (see emoflow.models.registry)."""
