"""Built-in architectures, one folder each (model.py, presets/, paper.yaml); found by
``emoflow.models.registry.discover``."""
