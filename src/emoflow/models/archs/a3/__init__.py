"""Architecture a3: model.py, presets/, paper.yaml (see emoflow.models.registry)."""
