"""emoflow: train, evaluate, deploy and watch multimodal emotion-recognition models."""

__version__ = "0.1.0"
