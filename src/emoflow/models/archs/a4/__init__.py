"""Architecture a4: model.py, presets/, paper.yaml (see emoflow.models.registry)."""
